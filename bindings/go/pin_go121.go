//go:build go1.21 && !transferlens_copy

package transferlens

import (
	"runtime"
	"unsafe"
)

// ZeroCopy reports whether host matrices are read in place (Go >= 1.21) or copied.
const ZeroCopy = true

// arena lends host memory to one C call. Here the slices are pinned: cgo lets Go memory that
// holds pinned Go pointers (the tl_matrix array) be passed to C.
type arena struct{ pinner runtime.Pinner }

func (a *arena) hostPtr(p unsafe.Pointer, _ uintptr) unsafe.Pointer {
	a.pinner.Pin(p)
	return p
}

func (a *arena) release() { a.pinner.Unpin() }

// wrapHold lends host memory to a wrapped parameter set for its whole life: the slices are
// pinned until the set is closed, and the library reads and writes them in place.
type wrapHold struct{ pinner runtime.Pinner }

func (h *wrapHold) hostPtr(p unsafe.Pointer, _ uintptr) unsafe.Pointer {
	h.pinner.Pin(p)
	return p
}

// syncIn and syncBack have nothing to do: the library uses the slices themselves.
func (h *wrapHold) syncIn()   {}
func (h *wrapHold) syncBack() {}
func (h *wrapHold) release()  { h.pinner.Unpin() }
