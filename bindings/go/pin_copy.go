//go:build !go1.21 || transferlens_copy

package transferlens

/*
#include <stdlib.h>
#include <string.h>
*/
import "C"

import "unsafe"

// ZeroCopy reports whether host matrices are read in place (Go >= 1.21) or copied.
const ZeroCopy = false

// arena lends host memory to one C call. Without runtime.Pinner (Go < 1.21, or the
// transferlens_copy build tag) a tl_matrix may not hold a Go pointer, so the data is copied to
// C memory, freed after the call.
type arena struct{ blocks []unsafe.Pointer }

func (a *arena) hostPtr(p unsafe.Pointer, bytes uintptr) unsafe.Pointer {
	c := C.malloc(C.size_t(bytes))
	if c == nil {
		panic("transferlens: out of memory copying a matrix")
	}
	C.memcpy(c, p, C.size_t(bytes))
	a.blocks = append(a.blocks, c)
	return c
}

func (a *arena) release() {
	for _, c := range a.blocks {
		C.free(c)
	}
	a.blocks = nil
}
