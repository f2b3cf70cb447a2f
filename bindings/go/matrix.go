package transferlens

/*
#include "transferlens.h"
#include <stdint.h>
// A device address as a pointer, without a uintptr -> unsafe.Pointer conversion in Go.
static inline const void *tl_go_address(uintptr_t p) { return (const void *)p; }
*/
import "C"

import "unsafe"

// Matrix is a row-major view (rows = samples, cols = features) of memory that stays the
// caller's. Host views keep their slice alive; the library reads it only during the calls that
// receive the Matrix, and with Go >= 1.21 it reads the slice itself (pinned), not a copy.
type Matrix struct {
	ptr    unsafe.Pointer // the first element of a host view (nil for an empty one)
	keep   any            // the slice behind ptr, so the collector keeps it while the view lives
	bytes  uintptr        // bytes the view spans, from ptr
	dev    int32          // CUDA device + 1; 0 (the zero value) means host memory
	addr   uintptr        // the first element of a device view
	dtype  DType
	rows   uint64
	cols   uint64
	stride uint64
}

// Float is the element type of the matrices whose dtype follows from the Go type.
type Float interface{ ~float32 | ~float64 }

// NewMatrix views data as a rows x cols row-major matrix: F32 for float32, F64 for float64.
func NewMatrix[T Float](data []T, rows, cols int) (Matrix, error) {
	return NewStridedMatrix(data, rows, cols, cols)
}

// NewStridedMatrix is NewMatrix with rowStride elements between row starts (rowStride >= cols):
// a block of columns of a wider row-major array.
func NewStridedMatrix[T Float](data []T, rows, cols, rowStride int) (Matrix, error) {
	var zero T
	dtype := F32
	if unsafe.Sizeof(zero) == 8 {
		dtype = F64
	}
	return hostMatrix(data, len(data), dtype, rows, cols, rowStride)
}

// NewMatrix16 views 16-bit floats stored as their bit patterns: dtype must be F16 (IEEE half)
// or BF16 (bfloat16). rowStride 0 means cols.
func NewMatrix16(bits []uint16, dtype DType, rows, cols, rowStride int) (Matrix, error) {
	if dtype != F16 && dtype != BF16 {
		return Matrix{}, errorf(StatusInvalidArgument, "uint16 data needs dtype F16 or BF16, not %d", dtype)
	}
	if rowStride == 0 {
		rowStride = cols
	}
	return hostMatrix(bits, len(bits), dtype, rows, cols, rowStride)
}

// NewDeviceMatrix views memory of CUDA device `device` at address ptr (a device pointer from
// the training framework). The library checks it when it is used.
func NewDeviceMatrix(ptr uintptr, dtype DType, device, rows, cols, rowStride int) (Matrix, error) {
	if device < 0 || rows < 0 || cols < 0 || rowStride < 0 {
		return Matrix{}, errorf(StatusInvalidArgument, "device %d, rows %d, cols %d, row stride %d: none may be negative",
			device, rows, cols, rowStride)
	}
	return Matrix{addr: ptr, dev: int32(device) + 1, dtype: dtype, rows: uint64(rows), cols: uint64(cols),
		stride: uint64(rowStride)}, nil
}

func hostMatrix[T any](data []T, length int, dtype DType, rows, cols, rowStride int) (Matrix, error) {
	if rows < 0 || cols < 0 || rowStride < 0 {
		return Matrix{}, errorf(StatusInvalidArgument, "rows %d, cols %d, row stride %d: none may be negative",
			rows, cols, rowStride)
	}
	if rowStride < cols {
		return Matrix{}, errorf(StatusInvalidArgument, "row stride %d is smaller than cols %d", rowStride, cols)
	}
	span := 0
	if rows > 0 {
		span = (rows-1)*rowStride + cols
	}
	// The library reads span elements: refuse a slice that is shorter.
	if span > length {
		return Matrix{}, errorf(StatusShapeMismatch, "the slice holds %d elements, a %d x %d view with row stride %d spans %d",
			length, rows, cols, rowStride, span)
	}
	m := Matrix{dtype: dtype, rows: uint64(rows), cols: uint64(cols), stride: uint64(rowStride)}
	if span > 0 {
		m.ptr = unsafe.Pointer(&data[0])
		m.keep = data
		m.bytes = uintptr(span) * dtype.size()
	}
	return m, nil
}

// Rows returns rows [first, first+count) of m: the same memory, no copy (a batch of samples).
func (m Matrix) Rows(first, count int) (Matrix, error) {
	if first < 0 || count < 0 || uint64(first)+uint64(count) > m.rows {
		return Matrix{}, errorf(StatusInvalidArgument, "rows [%d, %d) of a view of %d rows", first, first+count, m.rows)
	}
	out := m
	out.rows = uint64(count)
	offset := uintptr(first) * uintptr(m.stride) * m.dtype.size()
	if m.dev > 0 {
		out.addr += offset
		return out, nil
	}
	if count == 0 {
		out.ptr, out.bytes = nil, 0
		return out, nil
	}
	out.ptr = unsafe.Add(m.ptr, offset)
	out.bytes = uintptr((uint64(count)-1)*m.stride+m.cols) * m.dtype.size()
	return out, nil
}

// OnDevice reports the CUDA device of a device view, or -1 for host memory.
func (m Matrix) OnDevice() int { return int(m.dev) - 1 }

// Shape returns the rows (samples) and cols (features).
func (m Matrix) Shape() (rows, cols int) { return int(m.rows), int(m.cols) }

// DType returns the element type.
func (m Matrix) DType() DType { return m.dtype }

// raw fills a tl_matrix for one call; host memory goes through the arena (pinned or copied).
func (m Matrix) raw(a *arena) C.tl_matrix {
	r := C.tl_matrix{dtype: C.tl_dtype(m.dtype), rows: C.uint64_t(m.rows), cols: C.uint64_t(m.cols),
		row_stride: C.uint64_t(m.stride), device: C.int32_t(m.dev - 1)}
	if m.dev > 0 {
		r.data = C.tl_go_address(C.uintptr_t(m.addr))
	} else if m.ptr != nil {
		r.data = a.hostPtr(m.ptr, m.bytes)
	}
	return r
}

// rawList fills a slice of tl_matrix for a call reading several views.
func rawList(a *arena, ms []Matrix) []C.tl_matrix {
	out := make([]C.tl_matrix, len(ms))
	for i, m := range ms {
		out[i] = m.raw(a)
	}
	return out
}
