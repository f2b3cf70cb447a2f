package transferlens

/*
#include <stdint.h>
#include <stdlib.h>
#include "transferlens.h"

extern int32_t goTransferlensEval(void* user, tl_params* params, tl_metrics* out);

// The Go callback with a cgo.Handle (an integer) as its user data.
static enum tl_status tl_go_evaluator(uintptr_t handle, tl_evaluator** out) {
	return tl_evaluator_from_callback((tl_eval_fn)goTransferlensEval, (void*)handle, out);
}
*/
import "C"

import (
	"runtime"
	"runtime/cgo"
	"unsafe"
)

// Metric is the metric an analysis reads.
type Metric uint32

const (
	MetricLoss     Metric = C.TL_METRIC_LOSS
	MetricError    Metric = C.TL_METRIC_ERROR
	MetricAccuracy Metric = C.TL_METRIC_ACCURACY
)

// Metrics of a parameter set on an evaluation set: mean loss, the 0-1 error, and accuracy
// (1 - error, or the host's own accuracy-like figure).
type Metrics struct {
	Loss, Error, Accuracy float64
}

// EvalFunc evaluates the host's model, whose weights the library has just written into live
// (the set wrapped around the model's slices and passed as `live` to the analysis, or the set
// given to Evaluate). A returned error aborts the analysis with ErrCallback and its message.
type EvalFunc func(live *Params) (Metrics, error)

type evalState struct {
	fn   EvalFunc
	live *Params // the set of the call in progress
}

// Evaluator evaluates parameter sets: a Go function (NewEvaluator) or the built-in MLP
// (NewMLPEvaluator). One call at a time; Close frees it (a finalizer frees a forgotten one).
type Evaluator struct {
	ptr    *C.tl_evaluator
	handle cgo.Handle // 0 for the built-in MLP
	state  *evalState
}

func newEvaluator(ptr *C.tl_evaluator, h cgo.Handle, st *evalState) *Evaluator {
	e := &Evaluator{ptr: ptr, handle: h, state: st}
	runtime.SetFinalizer(e, (*Evaluator).Close)
	return e
}

// NewEvaluator makes an evaluator from a Go function.
func NewEvaluator(f EvalFunc) (*Evaluator, error) {
	if f == nil {
		return nil, errorf(StatusNullArgument, "NewEvaluator needs a function")
	}
	st := &evalState{fn: f}
	h := cgo.NewHandle(st)
	var out *C.tl_evaluator
	if err := call(func() C.enum_tl_status { return C.tl_go_evaluator(C.uintptr_t(h), &out) }); err != nil {
		h.Delete()
		return nil, err
	}
	return newEvaluator(out, h, st), nil
}

// NewMLPEvaluator makes an evaluator of the built-in MLP with layer widths sizes (inputs,
// hidden..., classes) on len(labels) samples: x holds len(labels) x sizes[0] floats, row major.
// The data are copied.
func NewMLPEvaluator(sizes []uint64, x []float32, labels []uint32) (*Evaluator, error) {
	if len(sizes) == 0 || uint64(len(x)) != uint64(len(labels))*sizes[0] {
		return nil, errorf(StatusShapeMismatch, "x holds %d floats for %d labels", len(x), len(labels))
	}
	var out *C.tl_evaluator
	err := call(func() C.enum_tl_status {
		return C.tl_evaluator_mlp(u64ptr(sizes), C.size_t(len(sizes)), f32ptr(x), u32ptr(labels),
			C.uint64_t(len(labels)), &out)
	})
	if err != nil {
		return nil, err
	}
	return newEvaluator(out, 0, nil), nil
}

// Close frees the evaluator; closing twice is a no-op.
func (e *Evaluator) Close() error {
	if e == nil {
		return nil
	}
	if e.ptr != nil {
		C.tl_evaluator_destroy(e.ptr)
		e.ptr = nil
	}
	if e.handle != 0 {
		e.handle.Delete()
		e.handle = 0
	}
	runtime.SetFinalizer(e, nil)
	return nil
}

func (e *Evaluator) get() (*C.tl_evaluator, error) {
	if e == nil || e.ptr == nil {
		return nil, errorf(StatusNullArgument, "use of a closed or nil Evaluator")
	}
	return e.ptr, nil
}

// run makes one analysis call with live as the set the Go function sees.
func (e *Evaluator) run(live *Params, f func(ev *C.tl_evaluator) C.enum_tl_status) error {
	ev, err := e.get()
	if err != nil {
		return err
	}
	if e.state != nil {
		e.state.live = live
		defer func() { e.state.live = nil }()
	}
	err = call(func() C.enum_tl_status { return f(ev) })
	runtime.KeepAlive(e)
	return err
}

func setCallbackError(msg string) {
	c := C.CString(msg)
	defer C.free(unsafe.Pointer(c))
	C.tl_set_callback_error(c)
}

// Evaluate returns the metrics of p (for a Go evaluator: the set its function receives).
func (e *Evaluator) Evaluate(p *Params) (Metrics, error) {
	hp, err := p.use()
	if err != nil {
		return Metrics{}, err
	}
	var out C.tl_metrics
	err = e.run(p, func(ev *C.tl_evaluator) C.enum_tl_status { return C.tl_evaluate(ev, hp, &out) })
	runtime.KeepAlive(p)
	return fromCMetrics(out), err
}

func fromCMetrics(m C.tl_metrics) Metrics {
	return Metrics{Loss: float64(m.loss), Error: float64(m.error), Accuracy: float64(m.accuracy)}
}

func fromCMetricsSlice(raw []C.tl_metrics) []Metrics {
	out := make([]Metrics, len(raw))
	for i, m := range raw {
		out[i] = fromCMetrics(m)
	}
	return out
}

// MLPInit returns initial weights of the built-in MLP with widths sizes: He-normal weights
// from seed, zero biases; tensors fc1.weight, fc1.bias, ...; one module per layer.
func MLPInit(sizes []uint64, seed uint64) (*Params, error) {
	var out *C.tl_params
	err := call(func() C.enum_tl_status {
		return C.tl_mlp_init(u64ptr(sizes), C.size_t(len(sizes)), C.uint64_t(seed), &out)
	})
	if err != nil {
		return nil, err
	}
	return newParams(out, nil), nil
}

// liveCall runs an analysis that writes each point into live and evaluates it: the sets are
// brought up to date before, and live's slices get the last point after.
func liveCall(ctx *Context, ev *Evaluator, sets []*Params, live *Params,
	f func(c *C.tl_context, ev *C.tl_evaluator, hs []*C.tl_params, hl *C.tl_params) C.enum_tl_status) error {
	h, err := ctx.handle()
	if err != nil {
		return err
	}
	hs := make([]*C.tl_params, len(sets))
	for i, s := range sets {
		if hs[i], err = s.use(); err != nil {
			return err
		}
	}
	hl, err := live.use()
	if err != nil {
		return err
	}
	err = ev.run(live, func(e *C.tl_evaluator) C.enum_tl_status { return f(h, e, hs, hl) })
	live.written()
	runtime.KeepAlive(ctx)
	runtime.KeepAlive(sets)
	runtime.KeepAlive(live)
	return err
}

// InterpolationCurve returns the metrics along (1 - lambda) a + lambda b at each lambda, each
// point written into live (holding a's weights). module >= 0 moves only that module (the rest
// stays at b); -1 moves all.
func InterpolationCurve(ctx *Context, ev *Evaluator, a, b, live *Params, lambdas []float64, module int) ([]Metrics, error) {
	raw := make([]C.tl_metrics, len(lambdas)+1)
	err := liveCall(ctx, ev, []*Params{a, b}, live, func(c *C.tl_context, e *C.tl_evaluator, hs []*C.tl_params, hl *C.tl_params) C.enum_tl_status {
		return C.tl_interpolation_curve(c, e, hs[0], hs[1], hl, f64ptr(lambdas), C.size_t(len(lambdas)), C.int64_t(module), &raw[0])
	})
	if err != nil {
		return nil, err
	}
	return fromCMetricsSlice(raw[:len(lambdas)]), nil
}

// BarrierResult is a performance barrier: Value (>= 0) peaking at PeakLambda, the metric at
// lambda = 0 and 1 (Start, End), and SameBasin (Value <= tolerance).
type BarrierResult struct {
	Value, PeakLambda, Start, End float64
	SameBasin                     bool
}

// Barrier returns the barrier of a curve from InterpolationCurve; lambdas must contain 0 and 1.
func Barrier(lambdas []float64, curve []Metrics, metric Metric, tolerance float64) (BarrierResult, error) {
	if len(lambdas) != len(curve) {
		return BarrierResult{}, errorf(StatusShapeMismatch, "%d lambdas but %d curve points", len(lambdas), len(curve))
	}
	raw := make([]C.tl_metrics, len(curve)+1)
	for i, m := range curve {
		raw[i] = C.tl_metrics{loss: C.double(m.Loss), error: C.double(m.Error), accuracy: C.double(m.Accuracy)}
	}
	var out C.tl_barrier_result
	err := call(func() C.enum_tl_status {
		return C.tl_barrier(f64ptr(lambdas), &raw[0], C.size_t(len(lambdas)), C.tl_metric(metric), C.double(tolerance), &out)
	})
	if err != nil {
		return BarrierResult{}, err
	}
	return BarrierResult{Value: float64(out.value), PeakLambda: float64(out.peak_lambda), Start: float64(out.start),
		End: float64(out.end), SameBasin: out.same_basin != 0}, nil
}

// CriticalityOptions are the options of module criticality; start from
// DefaultCriticalityOptions. See tl_criticality_options in the C header for each field.
type CriticalityOptions struct {
	Metric        Metric
	EpsKind       EpsKind
	Eps           float64
	NoiseRelative bool // per-element noise std sigma ||theta_i|| / sqrt(k_i); else sigma x NoiseScale
	NoiseScale    float64
	Refined       bool // bisection on sigma, then alpha refined; else the grid
	Alphas        uint32
	Sigmas        uint32
	Tolerance     float64
	AlphaSteps    uint32
	Samples       uint32
	Seed          uint64
	SigmaFloor    float64 // the smallest sigma of a feasible point; below it a module is +Inf, infeasible
	Confidence    float64 // feasible when mean + Confidence standard errors is within eps
	Repeats       uint32  // independent noise seeds Seed, Seed+1, ...
}

// EpsKind says how CriticalityOptions.Eps is read.
type EpsKind uint32

const (
	EpsAbsolute EpsKind = 0 // Eps is the threshold itself
	EpsRelative EpsKind = 1 // the threshold is (1 + Eps) x the final model's metric
	EpsIncrease EpsKind = 2 // the threshold is the final model's metric + Eps (the default)
)

func b32(b bool) C.uint32_t {
	if b {
		return 1
	}
	return 0
}

// DefaultCriticalityOptions returns the library's defaults.
func DefaultCriticalityOptions() CriticalityOptions {
	return fromCOptions(C.tl_criticality_options_default())
}

// ReferenceCriticalityOptions returns the public implementation's grid
// (tl_criticality_options_reference).
func ReferenceCriticalityOptions() CriticalityOptions {
	return fromCOptions(C.tl_criticality_options_reference())
}

func fromCOptions(d C.tl_criticality_options) CriticalityOptions {
	return CriticalityOptions{
		Metric: Metric(d.metric), EpsKind: EpsKind(d.eps_relative), Eps: float64(d.eps),
		NoiseRelative: d.noise_relative != 0, NoiseScale: float64(d.noise_scale), Refined: d.refined != 0,
		Alphas: uint32(d.alphas), Sigmas: uint32(d.sigmas), Tolerance: float64(d.tolerance),
		AlphaSteps: uint32(d.alpha_steps), Samples: uint32(d.samples), Seed: uint64(d.seed),
		SigmaFloor: float64(d.sigma_floor), Confidence: float64(d.confidence), Repeats: uint32(d.repeats),
	}
}

// toC fills the C struct, size included; nil gives the defaults.
func (o *CriticalityOptions) toC() C.tl_criticality_options {
	if o == nil {
		d := DefaultCriticalityOptions()
		o = &d
	}
	var c C.tl_criticality_options
	c.size = C.size_t(unsafe.Sizeof(c))
	c.metric = C.tl_metric(o.Metric)
	c.eps_relative = C.uint32_t(o.EpsKind)
	c.eps = C.double(o.Eps)
	c.noise_relative = b32(o.NoiseRelative)
	c.noise_scale = C.double(o.NoiseScale)
	c.refined = b32(o.Refined)
	c.alphas = C.uint32_t(o.Alphas)
	c.sigmas = C.uint32_t(o.Sigmas)
	c.tolerance = C.double(o.Tolerance)
	c.alpha_steps = C.uint32_t(o.AlphaSteps)
	c.samples = C.uint32_t(o.Samples)
	c.seed = C.uint64_t(o.Seed)
	c.sigma_floor = C.double(o.SigmaFloor)
	c.confidence = C.double(o.Confidence)
	c.repeats = C.uint32_t(o.Repeats)
	return c
}

// Criticality is one module's criticality: Value is +Inf when no point of the search is feasible.
type Criticality struct {
	Value, Alpha, Sigma, NoiseStd, Expected float64
	Numel, Points                           uint64
}

func fromCCriticality(c C.tl_criticality) Criticality {
	return Criticality{Value: float64(c.value), Alpha: float64(c.alpha), Sigma: float64(c.sigma),
		NoiseStd: float64(c.noise_std), Expected: float64(c.expected), Numel: uint64(c.numel), Points: uint64(c.points)}
}

func (c Criticality) toC() C.tl_criticality {
	return C.tl_criticality{value: C.double(c.Value), alpha: C.double(c.Alpha), sigma: C.double(c.Sigma),
		noise_std: C.double(c.NoiseStd), expected: C.double(c.Expected), numel: C.uint64_t(c.Numel),
		points: C.uint64_t(c.Points)}
}

// NetworkSummary sums a network criticality: Total (+Inf if a module is infeasible), the
// final model's metric, the eps used, and JointExpected, the metric with every module at its
// minimiser at once (the expectation term of PACBayesBound).
type NetworkSummary struct {
	Total, FinalMetric, Eps, JointExpected float64
}

// Path is the path of a criticality: Init to Final straight, or, when Checkpoints is not empty,
// the piecewise-linear path through them (first initial, last final; Init and Final ignored).
type Path struct {
	Init, Final *Params
	Checkpoints []*Params
}

func (p Path) sets() []*Params {
	if len(p.Checkpoints) > 0 {
		return p.Checkpoints
	}
	return []*Params{p.Init, p.Final}
}

func (p Path) final() *Params {
	if len(p.Checkpoints) > 0 {
		return p.Checkpoints[len(p.Checkpoints)-1]
	}
	return p.Final
}

// pathArgs are (init, final, checkpoints, n) for C from the sets' handles.
func (p Path) args(hs []*C.tl_params) (*C.tl_params, *C.tl_params, **C.tl_params, C.size_t) {
	if len(p.Checkpoints) > 0 {
		return nil, nil, &hs[0], C.size_t(len(hs))
	}
	return hs[0], hs[1], nil, 0
}

// ModuleCriticality returns the criticality of module `module` of the path's final set, every
// point written into live. opts nil gives the defaults.
func ModuleCriticality(ctx *Context, ev *Evaluator, path Path, live *Params, module int, opts *CriticalityOptions) (Criticality, error) {
	if module < 0 {
		return Criticality{}, errorf(StatusNotFound, "module %d", module)
	}
	o := opts.toC()
	var out C.tl_criticality
	err := liveCall(ctx, ev, path.sets(), live, func(c *C.tl_context, e *C.tl_evaluator, hs []*C.tl_params, hl *C.tl_params) C.enum_tl_status {
		hi, hf, hc, n := path.args(hs)
		return C.tl_module_criticality(c, e, hi, hf, hc, n, hl, C.size_t(module), &o, &out)
	})
	if err != nil {
		return Criticality{}, err
	}
	return fromCCriticality(out), nil
}

// NetworkCriticality returns every module's criticality and their sum.
func NetworkCriticality(ctx *Context, ev *Evaluator, path Path, live *Params, opts *CriticalityOptions) ([]Criticality, NetworkSummary, error) {
	n := path.final().ModuleCount()
	o := opts.toC()
	raw := make([]C.tl_criticality, n+1)
	var sum C.tl_network_summary
	err := liveCall(ctx, ev, path.sets(), live, func(c *C.tl_context, e *C.tl_evaluator, hs []*C.tl_params, hl *C.tl_params) C.enum_tl_status {
		hi, hf, hc, nc := path.args(hs)
		return C.tl_network_criticality(c, e, hi, hf, hc, nc, hl, &o, &raw[0], C.size_t(n), &sum)
	})
	if err != nil {
		return nil, NetworkSummary{}, err
	}
	mods := make([]Criticality, n)
	for i := range mods {
		mods[i] = fromCCriticality(raw[i])
	}
	return mods, NetworkSummary{Total: float64(sum.total), FinalMetric: float64(sum.final_metric), Eps: float64(sum.eps),
		JointExpected: float64(sum.joint_expected)}, nil
}

// PACBayesBound returns the PAC-Bayes bound of the criticality theorem for the modules' results
// with m samples and confidence delta; expected is the metric under the joint perturbation
// (NetworkSummary.JointExpected). +Inf when a module is infeasible.
func PACBayesBound(modules []Criticality, expected float64, m uint64, delta float64) (float64, error) {
	raw := make([]C.tl_criticality, len(modules)+1)
	for i, c := range modules {
		raw[i] = c.toC()
	}
	var out C.double
	err := call(func() C.enum_tl_status {
		return C.tl_pac_bayes_bound(&raw[0], C.size_t(len(modules)), C.double(expected), C.uint64_t(m), C.double(delta), &out)
	})
	return float64(out), err
}

// RewindCurve returns the metrics of module `module` at (1 - alpha) init + alpha final, every
// other weight at final, for each alpha (1 = final, 0 = initial); each point is written into live.
func RewindCurve(ctx *Context, ev *Evaluator, init, final, live *Params, module int, alphas []float64) ([]Metrics, error) {
	if module < 0 {
		return nil, errorf(StatusNotFound, "module %d", module)
	}
	raw := make([]C.tl_metrics, len(alphas)+1)
	err := liveCall(ctx, ev, []*Params{init, final}, live, func(c *C.tl_context, e *C.tl_evaluator, hs []*C.tl_params, hl *C.tl_params) C.enum_tl_status {
		return C.tl_rewind_curve(c, e, hs[0], hs[1], hl, C.size_t(module), f64ptr(alphas), C.size_t(len(alphas)), &raw[0])
	})
	if err != nil {
		return nil, err
	}
	return fromCMetricsSlice(raw[:len(alphas)]), nil
}

// BlockShuffle shuffles in place n row-major c x h x w images: each is cut into block x block
// blocks (all channels), permuted by one permutation drawn from seed, the same for every image.
func BlockShuffle(images []float32, n, c, h, w, block, seed uint64) error {
	if uint64(len(images)) != n*c*h*w {
		return errorf(StatusShapeMismatch, "the slice holds %d floats, not %d", len(images), n*c*h*w)
	}
	return call(func() C.enum_tl_status {
		return C.tl_block_shuffle(f32ptr(images), C.uint64_t(n), C.uint64_t(c), C.uint64_t(h), C.uint64_t(w),
			C.uint64_t(block), C.uint64_t(seed))
	})
}

// Agreement of two models' predictions: Counts = both right, only A right, only B right, both
// wrong with the same label, both wrong with different labels; Category[i] in 0..4, in that order.
type Agreement struct {
	Counts   [5]uint64
	Category []uint8
}

// PredictionAgreement compares two models' predicted labels a and b with the true labels.
func PredictionAgreement(a, b, truth []uint32) (Agreement, error) {
	if len(a) != len(truth) || len(b) != len(truth) {
		return Agreement{}, errorf(StatusShapeMismatch, "label slices of lengths %d, %d, %d", len(a), len(b), len(truth))
	}
	var counts [5]C.uint64_t
	cat := make([]uint8, len(truth)+1)
	err := call(func() C.enum_tl_status {
		return C.tl_prediction_agreement(u32ptr(a), u32ptr(b), u32ptr(truth), C.size_t(len(truth)), &counts[0],
			(*C.uint8_t)(unsafe.Pointer(&cat[0])))
	})
	if err != nil {
		return Agreement{}, err
	}
	out := Agreement{Category: cat[:len(truth)]}
	for i, c := range counts {
		out.Counts[i] = uint64(c)
	}
	return out, nil
}

func u64ptr(s []uint64) *C.uint64_t {
	if len(s) == 0 {
		return nil
	}
	return (*C.uint64_t)(unsafe.Pointer(&s[0]))
}

func u32ptr(s []uint32) *C.uint32_t {
	if len(s) == 0 {
		return nil
	}
	return (*C.uint32_t)(unsafe.Pointer(&s[0]))
}

func f32ptr(s []float32) *C.float {
	if len(s) == 0 {
		return nil
	}
	return (*C.float)(unsafe.Pointer(&s[0]))
}

// CriticalityReport is one module's full report (tl_criticality_report): Value (the mean over the
// repeats, +Inf when infeasible), PerParameter (Value / Numel, to rank modules of different
// sizes), the PAC-Bayes term, the Spread over the repeats, the first repeat's minimiser, the
// metric with only this module rewound and the area under its rewind curve.
type CriticalityReport struct {
	Value, PerParameter, PACBayesTerm, Spread, Alpha, Sigma, NoiseStd, Expected, ExpectedSE float64
	RewoundMetric, RewindArea                                                               float64
	Numel, Points                                                                           uint64
	Feasible                                                                                bool
	Repeats                                                                                 uint32
}

func fromCReport(r C.tl_criticality_report) CriticalityReport {
	return CriticalityReport{Value: float64(r.value), PerParameter: float64(r.per_parameter),
		PACBayesTerm: float64(r.pac_bayes_term), Spread: float64(r.spread), Alpha: float64(r.alpha),
		Sigma: float64(r.sigma), NoiseStd: float64(r.noise_std), Expected: float64(r.expected),
		ExpectedSE: float64(r.expected_se), RewoundMetric: float64(r.rewound_metric), RewindArea: float64(r.rewind_area),
		Numel: uint64(r.numel), Points: uint64(r.points), Feasible: r.feasible != 0, Repeats: uint32(r.repeats)}
}

// NetworkReport is a network criticality's report (tl_network_report); keep it whole for
// PACBayesReport.
type NetworkReport struct {
	Total, TotalSpread, FinalMetric, Eps, JointExpected, PACBayesKL, RankingAgreement float64
	RankingStable                                                                     bool
	InfeasibleModules                                                                 uint32
	raw                                                                               C.tl_network_report
}

// ModuleCriticalityReport is ModuleCriticality with the full report.
func ModuleCriticalityReport(ctx *Context, ev *Evaluator, path Path, live *Params, module int, opts *CriticalityOptions) (CriticalityReport, error) {
	if module < 0 {
		return CriticalityReport{}, errorf(StatusNotFound, "module %d", module)
	}
	o := opts.toC()
	var out C.tl_criticality_report
	out.size = C.size_t(unsafe.Sizeof(out))
	err := liveCall(ctx, ev, path.sets(), live, func(c *C.tl_context, e *C.tl_evaluator, hs []*C.tl_params, hl *C.tl_params) C.enum_tl_status {
		hi, hf, hc, n := path.args(hs)
		return C.tl_module_criticality_report(c, e, hi, hf, hc, n, hl, C.size_t(module), &o, &out)
	})
	if err != nil {
		return CriticalityReport{}, err
	}
	return fromCReport(out), nil
}

// NetworkCriticalityReport is NetworkCriticality with the full reports.
func NetworkCriticalityReport(ctx *Context, ev *Evaluator, path Path, live *Params, opts *CriticalityOptions) ([]CriticalityReport, NetworkReport, error) {
	n := path.final().ModuleCount()
	if n == 0 {
		return nil, NetworkReport{}, errorf(StatusInvalidArgument, "the final set has no modules")
	}
	o := opts.toC()
	raw := make([]C.tl_criticality_report, n)
	raw[0].size = C.size_t(unsafe.Sizeof(raw[0]))
	var sum C.tl_network_report
	sum.size = C.size_t(unsafe.Sizeof(sum))
	err := liveCall(ctx, ev, path.sets(), live, func(c *C.tl_context, e *C.tl_evaluator, hs []*C.tl_params, hl *C.tl_params) C.enum_tl_status {
		hi, hf, hc, nc := path.args(hs)
		return C.tl_network_criticality_report(c, e, hi, hf, hc, nc, hl, &o, &raw[0], C.size_t(n), &sum)
	})
	if err != nil {
		return nil, NetworkReport{}, err
	}
	mods := make([]CriticalityReport, n)
	for i := range mods {
		mods[i] = fromCReport(raw[i])
	}
	return mods, NetworkReport{Total: float64(sum.total), TotalSpread: float64(sum.total_spread),
		FinalMetric: float64(sum.final_metric), Eps: float64(sum.eps), JointExpected: float64(sum.joint_expected),
		PACBayesKL: float64(sum.pac_bayes_kl), RankingAgreement: float64(sum.ranking_agreement),
		RankingStable: sum.ranking_stable != 0, InfeasibleModules: uint32(sum.infeasible_modules), raw: sum}, nil
}

// BoundReport is the PAC-Bayes bound with its reading (tl_bound_report): Vacuous when it
// exceeds 1; HeldOut, when test data were given, the plain held-out estimate.
type BoundReport struct {
	Bound, HeldOut      float64
	Vacuous, HasHeldOut bool
}

// PACBayesReport returns the bound from a network report with m = the samples the criticality
// was measured on; with nTest > 0 the held-out estimate from testError beside it.
func PACBayesReport(net NetworkReport, m uint64, delta, testError float64, nTest uint64) (BoundReport, error) {
	var out C.tl_bound_report
	out.size = C.size_t(unsafe.Sizeof(out))
	raw := net.raw
	if err := call(func() C.enum_tl_status {
		return C.tl_pac_bayes_report(&raw, C.uint64_t(m), C.double(delta), C.double(testError), C.uint64_t(nTest), &out)
	}); err != nil {
		return BoundReport{}, err
	}
	return BoundReport{Bound: float64(out.bound), HeldOut: float64(out.held_out), Vacuous: out.vacuous != 0,
		HasHeldOut: out.has_held_out != 0}, nil
}
