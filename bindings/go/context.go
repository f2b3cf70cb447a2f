package transferlens

/*
#include "transferlens.h"
*/
import "C"

import (
	"runtime"
	"unsafe"
)

// Context is the resolved backend (CPU or a CUDA device) analyses run on. A CPU context may be
// used by several goroutines at once; a CUDA context owns one stream: give each goroutine its
// own. Close frees it; do not Close while another goroutine uses it.
type Context struct {
	ptr *C.tl_context
}

// NewContext makes a context. BackendAuto picks CUDA when a driver and a device are present,
// else the CPU; BackendCUDA without them fails with ErrDeviceUnavailable. device is the CUDA
// device ordinal (ignored for the CPU).
func NewContext(backend Backend, device int) (*Context, error) {
	var ptr *C.tl_context
	err := call(func() C.enum_tl_status {
		return C.tl_context_create(C.tl_backend(backend), C.int32_t(device), &ptr)
	})
	if err != nil {
		return nil, err
	}
	c := &Context{ptr: ptr}
	runtime.SetFinalizer(c, (*Context).Close) // a safety net; Close is the way
	return c, nil
}

// NewCPUContext makes a context on the CPU backend.
func NewCPUContext() (*Context, error) { return NewContext(BackendCPU, 0) }

// Close frees the context; closing twice is a no-op.
func (c *Context) Close() error {
	if c != nil && c.ptr != nil {
		C.tl_context_destroy(c.ptr)
		c.ptr = nil
		runtime.SetFinalizer(c, nil)
	}
	return nil
}

func (c *Context) handle() (*C.tl_context, error) {
	if c == nil || c.ptr == nil {
		return nil, errorf(StatusNullArgument, "use of a closed or nil Context")
	}
	return c.ptr, nil
}

// Backend returns the resolved backend: BackendCPU or BackendCUDA.
func (c *Context) Backend() (Backend, error) {
	h, err := c.handle()
	if err != nil {
		return 0, err
	}
	var out C.enum_tl_backend
	err = call(func() C.enum_tl_status { return C.tl_context_backend(h, &out) })
	runtime.KeepAlive(c) // the finalizer must not free the handle during the call
	return Backend(out), err
}

// CKALinear returns the linear CKA of x and y (rows are the same samples).
func (c *Context) CKALinear(x, y Matrix, est Estimator) (float64, error) {
	h, err := c.handle()
	if err != nil {
		return 0, err
	}
	var a arena
	defer a.release()
	rx, ry := x.raw(&a), y.raw(&a)
	var out C.double
	err = call(func() C.enum_tl_status { return C.tl_cka_linear(h, &rx, &ry, C.tl_cka_estimator(est), &out) })
	runtime.KeepAlive(c)
	runtime.KeepAlive(x.keep)
	runtime.KeepAlive(y.keep)
	return float64(out), err
}

// CKAMatrix returns the CKA of every pair: out[i][j] = CKA(xs[i], ys[j]). Each layer's Gram is
// formed once.
func (c *Context) CKAMatrix(xs, ys []Matrix, est Estimator) ([][]float64, error) {
	h, err := c.handle()
	if err != nil {
		return nil, err
	}
	if len(xs) == 0 || len(ys) == 0 {
		return nil, errorf(StatusInvalidArgument, "CKAMatrix needs at least one x and one y layer (got %d and %d)",
			len(xs), len(ys))
	}
	var a arena
	defer a.release()
	rx, ry := rawList(&a, xs), rawList(&a, ys)
	flat := make([]float64, len(xs)*len(ys))
	err = call(func() C.enum_tl_status {
		return C.tl_cka_matrix(h, &rx[0], C.size_t(len(rx)), &ry[0], C.size_t(len(ry)), C.tl_cka_estimator(est),
			(*C.double)(unsafe.Pointer(&flat[0])))
	})
	runtime.KeepAlive(c)
	runtime.KeepAlive(xs)
	runtime.KeepAlive(ys)
	if err != nil {
		return nil, err
	}
	return rowsOf(flat, len(xs), len(ys)), nil
}

// rowsOf splits a row-major nx*ny slice into nx rows sharing its memory.
func rowsOf(flat []float64, nx, ny int) [][]float64 {
	out := make([][]float64, nx)
	for i := range out {
		out[i] = flat[i*ny : (i+1)*ny : (i+1)*ny]
	}
	return out
}
