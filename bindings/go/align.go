package transferlens

/*
#include <stdint.h>
#include <stdlib.h>
#include "transferlens.h"
*/
import "C"

import (
	"runtime"
	"unsafe"
)

// PermSpec is a permutation spec (docs/align.md): which tensor axes share one permutation of
// hidden units, in groups. Permutations cross the binding as one flat []uint64 for the whole
// spec: group g's permutation at the offset of the sizes of the groups before it, perm[i] being
// the unit of B that becomes unit i; Units gives the total length. A spec is immutable: several
// goroutines may use it at once. Close frees it; a finalizer frees a forgotten one.
type PermSpec struct {
	ptr *C.tl_perm_spec
}

func newPermSpec(ptr *C.tl_perm_spec) *PermSpec {
	s := &PermSpec{ptr: ptr}
	runtime.SetFinalizer(s, (*PermSpec).Close)
	return s
}

// InferPermSpec infers the spec from a set's own description: the built-in CNN's when the set
// came from CNN.Init (or a file saved from one), else a plain chain of dense layers (its 2-D
// "*.weight" tensors in set order; the built-in MLP is one). A set that is neither is
// ErrShapeMismatch or ErrInvalidArgument naming the tensor.
func InferPermSpec(set *Params) (*PermSpec, error) {
	h, err := set.use()
	if err != nil {
		return nil, err
	}
	var ptr *C.tl_perm_spec
	err = call(func() C.enum_tl_status { return C.tl_perm_spec_infer(h, &ptr) })
	runtime.KeepAlive(set)
	if err != nil {
		return nil, err
	}
	return newPermSpec(ptr), nil
}

// PermSpecFromJSON reads a spec from its JSON form (docs/align.md):
// {"groups": [{"name", "size", "axes": [[tensor, axis], ...], "partition": [...]}]}. Malformed
// JSON is ErrFormat; a size of 0 or a partition that is no chain of divisors ErrInvalidArgument.
func PermSpecFromJSON(json string) (*PermSpec, error) {
	cjson := C.CString(json)
	defer C.free(unsafe.Pointer(cjson))
	var ptr *C.tl_perm_spec
	if err := call(func() C.enum_tl_status { return C.tl_perm_spec_from_json(cjson, &ptr) }); err != nil {
		return nil, err
	}
	return newPermSpec(ptr), nil
}

// Close frees the spec; closing twice is a no-op.
func (s *PermSpec) Close() error {
	if s != nil && s.ptr != nil {
		C.tl_perm_spec_destroy(s.ptr)
		s.ptr = nil
		runtime.SetFinalizer(s, nil)
	}
	return nil
}

func (s *PermSpec) handle() (*C.tl_perm_spec, error) {
	if s == nil || s.ptr == nil {
		return nil, errorf(StatusNullArgument, "use of a closed or nil PermSpec")
	}
	return s.ptr, nil
}

// GroupCount returns the number of groups (0 for a closed or nil spec).
func (s *PermSpec) GroupCount() int {
	h, err := s.handle()
	if err != nil {
		return 0
	}
	n := C.tl_perm_spec_group_count(h)
	runtime.KeepAlive(s)
	return int(n)
}

// Units returns the number of units over all groups: the length of a permutation (0 for a closed
// or nil spec).
func (s *PermSpec) Units() int {
	h, err := s.handle()
	if err != nil {
		return 0
	}
	n := C.tl_perm_spec_units(h)
	runtime.KeepAlive(s)
	return int(n)
}

// GroupSize returns the number of units of group `group` (ErrNotFound past the last group).
func (s *PermSpec) GroupSize(group int) (uint64, error) {
	h, err := s.handle()
	if err != nil {
		return 0, err
	}
	if group < 0 {
		return 0, errorf(StatusNotFound, "group %d is out of range", group)
	}
	var out C.uint64_t
	err = call(func() C.enum_tl_status { return C.tl_perm_spec_group_size(h, C.size_t(group), &out) })
	runtime.KeepAlive(s)
	return uint64(out), err
}

// Check checks the spec against a set: every tensor it names exists and is a weight with the
// group's size on its axis, and no (tensor, axis) is in two groups. Errors name the group and
// tensor.
func (s *PermSpec) Check(set *Params) error {
	h, err := s.handle()
	if err != nil {
		return err
	}
	hs, err := set.use()
	if err != nil {
		return err
	}
	err = call(func() C.enum_tl_status { return C.tl_perm_spec_check(h, hs) })
	runtime.KeepAlive(s)
	runtime.KeepAlive(set)
	return err
}

// AlignOptions are the options of weight matching; start from DefaultAlignOptions.
type AlignOptions struct {
	Seed      uint64 // seeds the order in which each pass visits the groups
	MaxPasses uint64 // the most passes over all groups (>= 1); matching stops after a pass that changed nothing
}

// DefaultAlignOptions returns the library's defaults: seed 0, at most 100 passes.
func DefaultAlignOptions() AlignOptions {
	d := C.tl_align_options_default()
	return AlignOptions{Seed: uint64(d.seed), MaxPasses: uint64(d.max_passes)}
}

// Alignment is what weight matching found: the flat permutation (see PermSpec), the passes
// made, and whether the last pass changed nothing.
type Alignment struct {
	Perms     []uint64
	Passes    uint64
	Converged bool
}

// AlignWeights is weight matching (Git Re-Basin): the permutation of b's units that best matches
// a's weights. opts nil gives the defaults. a and b must both fit the spec with equal shapes
// (errors name the group and tensor). AlignApply(spec, b, result.Perms) is b in a's unit order.
// It is a local search (coordinate descent over the groups): it stops where no single group can
// improve, which on narrow layers need not be the best permutation, even for an exact permuted
// copy of a (AlignActivations solves each group once, exactly, with no search).
func AlignWeights(spec *PermSpec, a, b *Params, opts *AlignOptions) (Alignment, error) {
	hspec, err := spec.handle()
	if err != nil {
		return Alignment{}, err
	}
	ha, hb, err := two(a, b)
	if err != nil {
		return Alignment{}, err
	}
	o := C.tl_align_options_default()
	if opts != nil {
		o.seed, o.max_passes = C.uint64_t(opts.Seed), C.uint64_t(opts.MaxPasses)
	}
	perms := make([]uint64, spec.Units())
	var passes C.uint64_t
	var converged C.int32_t
	err = call(func() C.enum_tl_status {
		return C.tl_align_weights(hspec, ha, hb, &o, u64ptr(perms), C.size_t(len(perms)), &passes, &converged)
	})
	runtime.KeepAlive(spec)
	runtime.KeepAlive(a)
	runtime.KeepAlive(b)
	if err != nil {
		return Alignment{}, err
	}
	return Alignment{Perms: perms, Passes: uint64(passes), Converged: converged == 1}, nil
}

// AlignActivations is activation matching: per group, the correlation of a's and b's unit
// activations on the same inputs, then one assignment. actsA[g] and actsB[g] (one per group of
// the spec) are group g's activations, observations x units (a conv: one row per input and
// pixel), host or device memory of the context's device. Fewer than 2 observations is
// ErrDegenerateInput; NaN or Inf is ErrNonFinite naming the group. Returns the flat permutation.
func AlignActivations(ctx *Context, spec *PermSpec, actsA, actsB []Matrix) ([]uint64, error) {
	h, err := ctx.handle()
	if err != nil {
		return nil, err
	}
	hspec, err := spec.handle()
	if err != nil {
		return nil, err
	}
	if len(actsA) != len(actsB) {
		return nil, errorf(StatusShapeMismatch, "%d groups of activations of a but %d of b", len(actsA), len(actsB))
	}
	var ar arena
	defer ar.release()
	ra, rb := rawList(&ar, actsA), rawList(&ar, actsB)
	var pa, pb *C.tl_matrix
	if len(ra) > 0 {
		pa, pb = &ra[0], &rb[0]
	}
	perms := make([]uint64, spec.Units())
	err = call(func() C.enum_tl_status {
		return C.tl_align_activations(h, hspec, pa, pb, C.size_t(len(ra)), u64ptr(perms), C.size_t(len(perms)))
	})
	runtime.KeepAlive(ctx)
	runtime.KeepAlive(spec)
	runtime.KeepAlive(actsA)
	runtime.KeepAlive(actsB)
	if err != nil {
		return nil, err
	}
	return perms, nil
}

// AlignApply returns b rewritten in the unit order perms (as AlignWeights and AlignActivations
// give it; len(perms) must be spec.Units()): a new set in memory it owns, every tensor of the
// spec gathered along its permuted axes, byte for byte; the other tensors, the metadata and the
// grouping copied. It computes the same function as b. A permutation that is not one, or that
// moves units across a group's blocks (its partition), is ErrInvalidArgument.
func AlignApply(spec *PermSpec, b *Params, perms []uint64) (*Params, error) {
	hspec, err := spec.handle()
	if err != nil {
		return nil, err
	}
	hb, err := b.use()
	if err != nil {
		return nil, err
	}
	var out *C.tl_params
	err = call(func() C.enum_tl_status {
		return C.tl_align_apply(hspec, hb, u64ptr(perms), C.size_t(len(perms)), &out)
	})
	runtime.KeepAlive(spec)
	runtime.KeepAlive(b)
	runtime.KeepAlive(perms)
	if err != nil {
		return nil, err
	}
	return newParams(out, nil), nil
}

// LayerwiseCurve is the layer-wise curve (Adilova et al., ICLR 2024): the metrics at each lambda
// of a with its modules firstModule .. firstModule+moduleCount (a's modules, in order) at
// (1 - lambda) a + lambda b and every other weight held at a bit for bit. One module: (i, 1);
// the first k: (0, k); the last k: (ModuleCount() - k, k). Each point is written into live, which
// must hold a's weights and be neither a nor b. The held modules are copied from a in host
// memory: a held tensor of a or live in CUDA device memory is ErrDeviceUnavailable naming it
// (moving every module holds nothing and runs where interpolation runs). Barrier on the curve
// gives its barrier; align b first (AlignApply) for the curve after alignment.
func LayerwiseCurve(ctx *Context, ev *Evaluator, a, b, live *Params, lambdas []float64, firstModule, moduleCount int) ([]Metrics, error) {
	if firstModule < 0 || moduleCount < 0 {
		return nil, errorf(StatusInvalidArgument, "modules %d .. %d + %d: neither may be negative",
			firstModule, firstModule, moduleCount)
	}
	raw := make([]C.tl_metrics, len(lambdas)+1)
	err := liveCall(ctx, ev, []*Params{a, b}, live, func(c *C.tl_context, e *C.tl_evaluator, hs []*C.tl_params, hl *C.tl_params) C.enum_tl_status {
		return C.tl_layerwise_curve(c, e, hs[0], hs[1], hl, f64ptr(lambdas), C.size_t(len(lambdas)),
			C.size_t(firstModule), C.size_t(moduleCount), &raw[0])
	})
	if err != nil {
		return nil, err
	}
	return fromCMetricsSlice(raw[:len(lambdas)]), nil
}
