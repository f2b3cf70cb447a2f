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

// wrapHold lends host memory to a wrapped parameter set for its whole life. Without
// runtime.Pinner C may not keep a Go pointer, so the set works on C copies of the slices:
// syncIn copies the slices to C before each call that uses the set, syncBack copies the
// results back after each call that writes into it. The slices see what the pinned path shows.
type wrapHold struct{ blocks []heldBlock }

type heldBlock struct {
	goPtr, cPtr unsafe.Pointer
	bytes       uintptr
}

func (h *wrapHold) hostPtr(p unsafe.Pointer, bytes uintptr) unsafe.Pointer {
	c := C.malloc(C.size_t(bytes))
	if c == nil {
		panic("transferlens: out of memory copying a tensor")
	}
	C.memcpy(c, p, C.size_t(bytes))
	h.blocks = append(h.blocks, heldBlock{p, c, bytes})
	return c
}

func (h *wrapHold) syncIn() {
	for _, b := range h.blocks {
		C.memcpy(b.cPtr, b.goPtr, C.size_t(b.bytes))
	}
}

func (h *wrapHold) syncBack() {
	for _, b := range h.blocks {
		C.memcpy(b.goPtr, b.cPtr, C.size_t(b.bytes))
	}
}

func (h *wrapHold) release() {
	for _, b := range h.blocks {
		C.free(b.cPtr)
	}
	h.blocks = nil
}
