// Package transferlens is the Go binding of transferlens, a native library for "What is being
// transferred in transfer learning?" (Neyshabur et al. 2020): linear CKA (single, layer-by-layer,
// streaming with all-reduce support) and parameter sets (safetensors files or wrapped slices:
// per-module distances, norms, interpolation, rewinding) and the landscape analyses (evaluators
// from Go functions or the built-in MLP, interpolation curves, barriers, module and network
// criticality, rewind curves, block shuffle, prediction agreement) over the library's C ABI.
// Context.CKAStatistics gives CKA's bootstrap interval, permutation null and most influential
// samples; permutation alignment (PermSpec, AlignWeights, AlignActivations, AlignApply) puts one
// model's hidden units in another's order, and LayerwiseCurve interpolates only some modules.
//
// Errors are *Error values carrying the library's status and message; compare them with
// errors.Is against the sentinels (ErrDegenerateInput, ErrShapeMismatch, ...). Handles (Context,
// CKAAccumulator, Params, Evaluator, CNN, PermSpec) are freed by Close; a finalizer frees a
// forgotten one, but Close them.
//
// Linking: cgo looks for include/transferlens.h and target/release/libtransferlens.so of the
// repository this package lives in (build the library first: cargo build --release --lib).
// To use an installed library instead, point cgo at it:
//
//	CGO_CFLAGS="-I/opt/transferlens/include" \
//	CGO_LDFLAGS="-L/opt/transferlens/lib -Wl,-rpath,/opt/transferlens/lib" go build
package transferlens

/*
#cgo CFLAGS: -I${SRCDIR}/../../include
#cgo LDFLAGS: -L${SRCDIR}/../../target/release -ltransferlens -Wl,-rpath,${SRCDIR}/../../target/release
#include <stdint.h>
#include <stdlib.h>
#include "transferlens.h"
*/
import "C"

import (
	"fmt"
	"runtime"
)

// HeaderVersion is the version of include/transferlens.h this package was compiled with;
// Version is the one of the library linked at run time.
var HeaderVersion = fmt.Sprintf("%d.%d.%d", C.TL_VERSION_MAJOR, C.TL_VERSION_MINOR, C.TL_VERSION_PATCH)

// HeaderABIVersion is the ABI version of the header this package was compiled with.
const HeaderABIVersion = uint32(C.TL_ABI_VERSION)

// Version returns the linked library's version, "MAJOR.MINOR.PATCH".
func Version() string { return C.GoString(C.tl_version()) }

// ABIVersion returns the linked library's ABI version; it must equal HeaderABIVersion.
func ABIVersion() uint32 { return uint32(C.tl_abi_version()) }

// Status is a tl_status code of the C ABI.
type Status uint32

// The status codes; their values are fixed by the C ABI.
const (
	StatusOK                Status = C.TL_STATUS_OK
	StatusNullArgument      Status = C.TL_STATUS_NULL_ARGUMENT
	StatusInvalidArgument   Status = C.TL_STATUS_INVALID_ARGUMENT
	StatusShapeMismatch     Status = C.TL_STATUS_SHAPE_MISMATCH
	StatusUnsupportedDType  Status = C.TL_STATUS_UNSUPPORTED_DTYPE
	StatusDegenerateInput   Status = C.TL_STATUS_DEGENERATE_INPUT
	StatusNonFinite         Status = C.TL_STATUS_NON_FINITE
	StatusIO                Status = C.TL_STATUS_IO
	StatusFormat            Status = C.TL_STATUS_FORMAT
	StatusNotFound          Status = C.TL_STATUS_NOT_FOUND
	StatusDeviceUnavailable Status = C.TL_STATUS_DEVICE_UNAVAILABLE
	StatusDevice            Status = C.TL_STATUS_DEVICE
	StatusCallback          Status = C.TL_STATUS_CALLBACK
	StatusPanic             Status = C.TL_STATUS_PANIC
	StatusOutOfMemory       Status = C.TL_STATUS_OUT_OF_MEMORY
)

// String returns the status's C name, e.g. "TL_STATUS_DEGENERATE_INPUT".
func (s Status) String() string { return C.GoString(C.tl_status_name(C.tl_status(s))) }

// Error is a failed call: the status and the library's message.
type Error struct {
	Status  Status
	Message string
}

func (e *Error) Error() string {
	if e.Message == "" {
		return "transferlens: " + e.Status.String()
	}
	return "transferlens: " + e.Status.String() + ": " + e.Message
}

// Is reports whether target is an *Error with the same status (and, when target has one, the
// same message): errors.Is(err, transferlens.ErrDegenerateInput).
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Status == e.Status && (t.Message == "" || t.Message == e.Message)
}

// Sentinels for errors.Is, one per failure status.
var (
	ErrNullArgument      = &Error{Status: StatusNullArgument}
	ErrInvalidArgument   = &Error{Status: StatusInvalidArgument}
	ErrShapeMismatch     = &Error{Status: StatusShapeMismatch}
	ErrUnsupportedDType  = &Error{Status: StatusUnsupportedDType}
	ErrDegenerateInput   = &Error{Status: StatusDegenerateInput}
	ErrNonFinite         = &Error{Status: StatusNonFinite}
	ErrIO                = &Error{Status: StatusIO}
	ErrFormat            = &Error{Status: StatusFormat}
	ErrNotFound          = &Error{Status: StatusNotFound}
	ErrDeviceUnavailable = &Error{Status: StatusDeviceUnavailable}
	ErrDevice            = &Error{Status: StatusDevice}
	ErrCallback          = &Error{Status: StatusCallback}
	ErrPanic             = &Error{Status: StatusPanic}
	ErrOutOfMemory       = &Error{Status: StatusOutOfMemory}
)

func errorf(s Status, format string, args ...any) error {
	return &Error{Status: s, Message: fmt.Sprintf(format, args...)}
}

// call runs one C function and turns a failure into an *Error. The message is thread-local in
// the library, so the goroutine stays on its OS thread from the call until the message is read.
func call(f func() C.enum_tl_status) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if s := f(); s != C.TL_STATUS_OK {
		return &Error{Status: Status(s), Message: C.GoString(C.tl_last_error_message())}
	}
	return nil
}

// Backend selects where analyses run.
type Backend uint32

const (
	// BackendAuto picks CUDA when a driver and a device are present, else the CPU.
	BackendAuto Backend = C.TL_BACKEND_AUTO
	BackendCPU  Backend = C.TL_BACKEND_CPU
	BackendCUDA Backend = C.TL_BACKEND_CUDA
)

// DType is the storage type of matrix elements.
type DType uint32

const (
	F32  DType = C.TL_DTYPE_F32
	F64  DType = C.TL_DTYPE_F64
	F16  DType = C.TL_DTYPE_F16
	BF16 DType = C.TL_DTYPE_BF16
)

func (d DType) size() uintptr {
	switch d {
	case F64:
		return 8
	case F32:
		return 4
	default:
		return 2
	}
}

// Estimator is the HSIC estimator of CKA.
type Estimator uint32

const (
	// Biased is ||Y~^T X~||_F^2 of the centered features (Kornblith et al. 2019).
	Biased Estimator = C.TL_CKA_BIASED
	// Debiased is the U-statistic of Song et al. (2012): needs 4 samples, can be slightly negative.
	Debiased Estimator = C.TL_CKA_DEBIASED
)
