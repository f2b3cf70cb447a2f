package transferlens

/*
#include "transferlens.h"
*/
import "C"

import (
	"runtime"
	"unsafe"
)

// CKAAccumulator is exact streaming CKA of nx x ny layer pairs: feeding batches gives the same
// result as the concatenated data. The first update fixes each layer's feature count.
//
// All-reduce across processes: every process updates; one broadcasts its exported shift
// (Export().Shift); every process calls Rebase with it; the moments are summed (MPI, NCCL);
// every process calls Import with the shift and the summed moments. A process that saw no data
// calls SetWidths before Import.
//
// An accumulator must not be used by two goroutines at once.
type CKAAccumulator struct {
	ptr    *C.tl_cka_accumulator
	nx, ny int
}

// State is an exported accumulator state: Moments[0] is the sample count. Moments of
// accumulators with equal shifts add up element by element.
type State struct {
	Shift   []float64
	Moments []float64
}

// NewCKAAccumulator makes an accumulator for nx x layers and ny y layers on ctx's backend; it
// keeps its own reference to the backend, so ctx may be closed first.
func NewCKAAccumulator(ctx *Context, nx, ny int, est Estimator) (*CKAAccumulator, error) {
	h, err := ctx.handle()
	if err != nil {
		return nil, err
	}
	if nx < 0 || ny < 0 {
		return nil, errorf(StatusInvalidArgument, "layer counts %d and %d may not be negative", nx, ny)
	}
	var ptr *C.tl_cka_accumulator
	err = call(func() C.enum_tl_status {
		return C.tl_cka_accumulator_create(h, C.size_t(nx), C.size_t(ny), C.tl_cka_estimator(est), &ptr)
	})
	runtime.KeepAlive(ctx)
	if err != nil {
		return nil, err
	}
	a := &CKAAccumulator{ptr: ptr, nx: nx, ny: ny}
	runtime.SetFinalizer(a, (*CKAAccumulator).Close)
	return a, nil
}

// Close frees the accumulator; closing twice is a no-op.
func (a *CKAAccumulator) Close() error {
	if a != nil && a.ptr != nil {
		C.tl_cka_accumulator_destroy(a.ptr)
		a.ptr = nil
		runtime.SetFinalizer(a, nil)
	}
	return nil
}

func (a *CKAAccumulator) handle() (*C.tl_cka_accumulator, error) {
	if a == nil || a.ptr == nil {
		return nil, errorf(StatusNullArgument, "use of a closed or nil CKAAccumulator")
	}
	return a.ptr, nil
}

// Layers returns the accumulator's layer counts.
func (a *CKAAccumulator) Layers() (nx, ny int) { return a.nx, a.ny }

// Update adds a batch: nx views of x layers and ny of y layers, all with the same rows.
func (a *CKAAccumulator) Update(xs, ys []Matrix) error {
	h, err := a.handle()
	if err != nil {
		return err
	}
	// The C function reads exactly nx and ny views: check the counts here.
	if len(xs) != a.nx || len(ys) != a.ny {
		return errorf(StatusShapeMismatch, "Update got %d x and %d y layers; the accumulator has %d and %d",
			len(xs), len(ys), a.nx, a.ny)
	}
	var ar arena
	defer ar.release()
	rx, ry := rawList(&ar, xs), rawList(&ar, ys)
	err = call(func() C.enum_tl_status { return C.tl_cka_accumulator_update(h, &rx[0], &ry[0]) })
	runtime.KeepAlive(a)
	runtime.KeepAlive(xs)
	runtime.KeepAlive(ys)
	return err
}

// Merge adds the state of from (same layer and feature counts).
func (a *CKAAccumulator) Merge(from *CKAAccumulator) error {
	h, err := a.handle()
	if err != nil {
		return err
	}
	f, err := from.handle()
	if err != nil {
		return err
	}
	err = call(func() C.enum_tl_status { return C.tl_cka_accumulator_merge(h, f) })
	runtime.KeepAlive(a)
	runtime.KeepAlive(from)
	return err
}

// Result returns the CKA of every pair, out[i][j], from the data seen so far.
func (a *CKAAccumulator) Result() ([][]float64, error) {
	h, err := a.handle()
	if err != nil {
		return nil, err
	}
	flat := make([]float64, a.nx*a.ny)
	err = call(func() C.enum_tl_status { return C.tl_cka_accumulator_result(h, f64ptr(flat)) })
	runtime.KeepAlive(a)
	if err != nil {
		return nil, err
	}
	return rowsOf(flat, a.nx, a.ny), nil
}

// StateSize returns the lengths of the exported state; both are 0 until the feature counts
// are fixed (by an update or SetWidths).
func (a *CKAAccumulator) StateSize() (shift, moments int, err error) {
	h, err := a.handle()
	if err != nil {
		return 0, 0, err
	}
	var s, m C.size_t
	err = call(func() C.enum_tl_status { return C.tl_cka_accumulator_state_size(h, &s, &m) })
	runtime.KeepAlive(a)
	return int(s), int(m), err
}

// Export returns the state: the shift and the moments.
func (a *CKAAccumulator) Export() (State, error) {
	ls, lm, err := a.StateSize()
	if err != nil {
		return State{}, err
	}
	h, _ := a.handle()
	st := State{Shift: make([]float64, ls), Moments: make([]float64, lm)}
	err = call(func() C.enum_tl_status {
		return C.tl_cka_accumulator_export(h, f64ptr(st.Shift), C.size_t(ls), f64ptr(st.Moments), C.size_t(lm))
	})
	runtime.KeepAlive(a)
	if err != nil {
		return State{}, err
	}
	return st, nil
}

// Rebase re-expresses the accumulated moments relative to shift (another process's exported
// shift); later updates use it too.
func (a *CKAAccumulator) Rebase(shift []float64) error {
	h, err := a.handle()
	if err != nil {
		return err
	}
	err = call(func() C.enum_tl_status { return C.tl_cka_accumulator_rebase(h, f64ptr(shift), C.size_t(len(shift))) })
	runtime.KeepAlive(a)
	return err
}

// Import replaces the state with an exported (possibly all-reduced) one.
func (a *CKAAccumulator) Import(st State) error {
	h, err := a.handle()
	if err != nil {
		return err
	}
	err = call(func() C.enum_tl_status {
		return C.tl_cka_accumulator_import(h, f64ptr(st.Shift), C.size_t(len(st.Shift)), f64ptr(st.Moments),
			C.size_t(len(st.Moments)))
	})
	runtime.KeepAlive(a)
	return err
}

// SetWidths fixes the feature counts (nx x widths, then ny y widths) of an accumulator that has
// seen no data, so that a state can be imported into it.
func (a *CKAAccumulator) SetWidths(widths []uint64) error {
	h, err := a.handle()
	if err != nil {
		return err
	}
	var p *C.uint64_t
	if len(widths) > 0 {
		p = (*C.uint64_t)(unsafe.Pointer(&widths[0]))
	}
	err = call(func() C.enum_tl_status { return C.tl_cka_accumulator_set_widths(h, p, C.size_t(len(widths))) })
	runtime.KeepAlive(a)
	return err
}

// f64ptr is the first element of s for C, or NULL for an empty slice (the library accepts NULL
// with a length of 0). Slices of float64 hold no Go pointers, so cgo lets C use them in place.
func f64ptr(s []float64) *C.double {
	if len(s) == 0 {
		return nil
	}
	return (*C.double)(unsafe.Pointer(&s[0]))
}
