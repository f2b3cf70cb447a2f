package transferlens

/*
#include <stdint.h>
#include "transferlens.h"
*/
import "C"

import (
	"fmt"
	"runtime/cgo"
	"unsafe"
)

// goTransferlensEval is the C evaluation callback of every Go evaluator. The user data is the
// cgo.Handle of the evaluator's state (an integer, never a Go pointer kept by C). A Go error or
// panic is reported with tl_set_callback_error and a non-zero return: nothing unwinds into C.
//
//export goTransferlensEval
func goTransferlensEval(user unsafe.Pointer, params *C.tl_params, out *C.tl_metrics) (rc C.int32_t) {
	defer func() {
		if r := recover(); r != nil {
			setCallbackError(fmt.Sprintf("the Go evaluation function panicked: %v", r))
			rc = 1
		}
	}()
	st, ok := cgo.Handle(uintptr(user)).Value().(*evalState)
	if !ok || st.fn == nil {
		setCallbackError("transferlens: a Go evaluator without a function")
		return 1
	}
	live := st.live
	if live != nil {
		if live.ptr != params {
			setCallbackError("transferlens: the library evaluated a set other than the live one")
			return 1
		}
		live.written() // without runtime.Pinner: the slices get the weights just written
	}
	m, err := st.fn(live)
	if err != nil {
		setCallbackError(err.Error())
		return 1
	}
	out.loss = C.double(m.Loss)
	out.error = C.double(m.Error)
	out.accuracy = C.double(m.Accuracy)
	return 0
}
