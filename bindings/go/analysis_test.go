package transferlens

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"
)

// quadratic is a host model: the weights w (wrapped as the live set) and the toy loss
// L(w) = ||w||^2 / (2K), evaluated in Go.
type quadratic struct {
	w     []float32
	calls int
}

func (q *quadratic) eval(*Params) (Metrics, error) {
	q.calls++
	s := 0.0
	for _, x := range q.w {
		s += float64(x) * float64(x)
	}
	l := s / float64(2*len(q.w))
	return Metrics{Loss: l, Error: l, Accuracy: 1 - l}, nil
}

func wrap1(t *testing.T, ctx *Context, w []float32) *Params {
	t.Helper()
	tensor, err := NewTensor("w.weight", w, uint64(len(w)))
	if err != nil {
		t.Fatal(err)
	}
	p, err := WrapParams(ctx, []Tensor{tensor})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func close1(t *testing.T, got, want, tol float64, what string) {
	t.Helper()
	if math.Abs(got-want) > tol*math.Max(1, math.Abs(want)) {
		t.Errorf("%s = %.17g, want %.17g", what, got, want)
	}
}

func TestAnalysisQuadraticCallback(t *testing.T) {
	const K = 1000
	ctx := must(NewCPUContext())
	defer ctx.Close()
	g := &rng{s: 31}
	initW, finalW := make([]float32, K), make([]float32, K)
	a := 0.0
	for i := range initW {
		initW[i] = float32(g.normal())
		a += float64(initW[i]) * float64(initW[i])
	}
	a /= K
	q := &quadratic{w: make([]float32, K)}
	init, fin, live := wrap1(t, ctx, initW), wrap1(t, ctx, finalW), wrap1(t, ctx, q.w)
	ev := must(NewEvaluator(q.eval))
	defer ev.Close()

	lambdas := []float64{-1, 0, 0.25, 0.5, 1, 1.5, 2}
	curve := must(InterpolationCurve(ctx, ev, init, fin, live, lambdas, -1))
	if q.calls != len(lambdas) {
		t.Fatalf("%d callback calls, want %d", q.calls, len(lambdas))
	}
	for i, l := range lambdas {
		close1(t, curve[i].Loss, (1-l)*(1-l)*a/2, 1e-5, fmt.Sprintf("loss at lambda %g", l))
	}
	// The slices hold the last point (lambda = 2): the Go model sees what the library wrote.
	close1(t, float64(q.w[0]), -float64(initW[0]), 1e-6, "live weight after the curve")

	bump := []Metrics{{0.1, 0.1, 0.9}, {0.5, 0.5, 0.5}, {0.2, 0.2, 0.8}}
	barriers := []struct {
		name    string
		lambdas []float64
		curve   []Metrics
		metric  Metric
		tol     float64
		want    BarrierResult
		wantErr error
	}{
		{"convex curve", lambdas, curve, MetricLoss, 1e-9, BarrierResult{Value: 0, SameBasin: true}, nil},
		{"accuracy bump", []float64{0, 0.5, 1}, bump, MetricAccuracy, 0.01,
			BarrierResult{Value: 0.35, PeakLambda: 0.5, Start: 0.9, End: 0.8}, nil},
		{"no endpoints", []float64{0.25, 0.5}, bump[:2], MetricLoss, 0, BarrierResult{}, ErrInvalidArgument},
		{"bad metric", []float64{0, 0.5, 1}, bump, Metric(9), 0, BarrierResult{}, ErrInvalidArgument},
		{"lengths", []float64{0, 1}, bump, MetricLoss, 0, BarrierResult{}, ErrShapeMismatch},
	}
	for _, tc := range barriers {
		t.Run("barrier/"+tc.name, func(t *testing.T) {
			got, err := Barrier(tc.lambdas, tc.curve, tc.metric, tc.tol)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("error %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			close1(t, got.Value, tc.want.Value, 1e-12, "value")
			if got.SameBasin != tc.want.SameBasin {
				t.Errorf("same basin %v, want %v", got.SameBasin, tc.want.SameBasin)
			}
			if tc.want.PeakLambda != 0 && (got.PeakLambda != tc.want.PeakLambda || got.Start != tc.want.Start || got.End != tc.want.End) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}

	// Criticality: minimise alpha^2 K a / sigma^2 subject to (1 - alpha)^2 a / 2 + sigma^2 / 2 <= eps.
	const eps = 0.3
	want := math.Inf(1)
	for i := 1; i <= 200000; i++ {
		al := float64(i) / 200000
		s2 := 2*eps - (1-al)*(1-al)*a
		if s2 > 0 && s2 <= 1 {
			want = math.Min(want, al*al*K*a/s2)
		}
	}
	d := DefaultCriticalityOptions()
	if d.Alphas != 11 || d.Samples != 10 || d.Metric != MetricError || d.EpsKind != EpsIncrease || !d.Refined ||
		!d.NoiseRelative || d.SigmaFloor != 1e-3 || d.Confidence != 2 || d.Repeats != 3 {
		t.Fatalf("defaults %+v", d)
	}
	endless := d
	endless.Tolerance = 1e-300 // 1 + tol == 1: refused, never an endless bisection
	if _, err := ModuleCriticality(ctx, ev, Path{Init: init, Final: fin}, live, 0, &endless); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("tolerance 1e-300: %v", err)
	}
	o := ReferenceCriticalityOptions()
	if o.Refined || o.Sigmas != 11 || o.SigmaFloor != 0 || o.Confidence != 0 || o.Repeats != 1 || o.EpsKind != EpsRelative {
		t.Fatalf("reference %+v", o)
	}
	o.Metric, o.EpsKind, o.Eps, o.Refined, o.Tolerance, o.AlphaSteps, o.Seed = MetricLoss, EpsAbsolute, eps, true, 1e-3, 12, 3
	c := must(ModuleCriticality(ctx, ev, Path{Init: init, Final: fin}, live, 0, &o))
	close1(t, c.Value/want, 1, 0.05, "criticality / analytic")
	if c.Numel != K || c.Expected > eps {
		t.Errorf("criticality %+v", c)
	}
	c2 := must(ModuleCriticality(ctx, ev, Path{Checkpoints: []*Params{init, fin}}, live, 0, &o))
	close1(t, c2.Value, c.Value, 1e-6, "criticality through checkpoints")
	mods, sum, err := NetworkCriticality(ctx, ev, Path{Init: init, Final: fin}, live, &o)
	if err != nil || len(mods) != 1 || sum.Total != mods[0].Value || math.IsInf(sum.JointExpected, 0) {
		t.Fatalf("network criticality %+v %+v %v", mods, sum, err)
	}
	if b := must(PACBayesBound(mods, sum.JointExpected, 1000, 0.05)); b <= sum.JointExpected {
		t.Errorf("bound %g below the expectation term %g", b, sum.JointExpected)
	}
	bounds := []struct {
		name    string
		mods    []Criticality
		m       uint64
		finite  bool
		wantErr error
	}{
		{"feasible", []Criticality{c}, 1000, true, nil},
		{"infeasible", []Criticality{{Value: math.Inf(1), Numel: K}}, 1000, false, nil},
		{"one sample", []Criticality{c}, 1, false, ErrInvalidArgument},
	}
	for _, tc := range bounds {
		t.Run("bound/"+tc.name, func(t *testing.T) {
			b, err := PACBayesBound(tc.mods, 0.1, tc.m, 0.05)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("error %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil || math.IsInf(b, 1) == tc.finite || (tc.finite && b <= 0.1) {
				t.Fatalf("bound %g, %v", b, err)
			}
		})
	}
	if _, err := PACBayesBound([]Criticality{c}, math.NaN(), 1000, 0.05); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("bound of a NaN expectation: %v", err)
	}
	// The full reports: three repeats, the size-aware measures, the rewind measures, the bound's reading.
	o3 := o
	o3.Repeats = 3
	rep := must(ModuleCriticalityReport(ctx, ev, Path{Init: init, Final: fin}, live, 0, &o3))
	close1(t, rep.Value/want, 1, 0.05, "report / analytic")
	if !rep.Feasible || rep.Repeats != 3 || rep.Spread <= 0 || rep.PerParameter != rep.Value/K {
		t.Errorf("report %+v", rep)
	}
	close1(t, rep.PACBayesTerm, K*math.Log1p(rep.Value/K), 1e-12, "PAC-Bayes term")
	close1(t, rep.RewoundMetric, a/2, 1e-5, "rewound metric")
	close1(t, rep.RewindArea, a/6+a*0.01/12, 1e-5, "rewind area")
	nmods, nrep, err := NetworkCriticalityReport(ctx, ev, Path{Init: init, Final: fin}, live, &o3)
	if err != nil || nrep.Total != nmods[0].Value || !nrep.RankingStable || nrep.PACBayesKL != nmods[0].PACBayesTerm || nrep.InfeasibleModules != 0 {
		t.Fatalf("network report %+v %+v %v", nmods, nrep, err)
	}
	br := must(PACBayesReport(nrep, 1000, 0.05, 0.1, 500))
	if !br.HasHeldOut || br.Vacuous != (br.Bound > 1) {
		t.Errorf("bound report %+v", br)
	}
	close1(t, br.HeldOut, 0.1+math.Sqrt(math.Log(1/0.05)/1000), 1e-12, "held-out estimate")
	tiny := o
	tiny.Eps, tiny.Refined, tiny.NoiseRelative, tiny.SigmaFloor = 1e-8, false, false, 1e-3
	tmods, trep, err := NetworkCriticalityReport(ctx, ev, Path{Init: init, Final: fin}, live, &tiny)
	if err != nil || !math.IsInf(tmods[0].Value, 1) || tmods[0].Feasible || trep.InfeasibleModules != 1 {
		t.Fatalf("below the floor %+v %+v %v", tmods, trep, err)
	}
	if b := must(PACBayesReport(trep, 1000, 0.05, 0, 0)); !b.Vacuous || !math.IsInf(b.Bound, 1) {
		t.Errorf("infeasible bound %+v", b)
	}
	bad := o
	bad.Eps = -1
	inf := must(ModuleCriticality(ctx, ev, Path{Init: init, Final: fin}, live, 0, &bad))
	if !math.IsInf(inf.Value, 1) {
		t.Errorf("infeasible criticality %g", inf.Value)
	}
	if _, err := ModuleCriticality(ctx, ev, Path{Init: init, Final: fin}, live, 5, nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("module 5: %v", err)
	}

	rw := must(RewindCurve(ctx, ev, init, fin, live, 0, []float64{1, 0}))
	if rw[0].Loss != 0 {
		t.Errorf("rewind at alpha 1: %g", rw[0].Loss)
	}
	close1(t, rw[1].Loss, a/2, 1e-5, "rewind at alpha 0")
}

func TestAnalysisCallbackErrors(t *testing.T) {
	ctx := must(NewCPUContext())
	defer ctx.Close()
	w := []float32{1, 2, 3}
	init, fin, live := wrap1(t, ctx, append([]float32(nil), w...)), wrap1(t, ctx, make([]float32, 3)), wrap1(t, ctx, make([]float32, 3))
	cases := []struct {
		name string
		fn   EvalFunc
		msg  string
	}{
		{"error", func(*Params) (Metrics, error) { return Metrics{}, errors.New("host model exploded") }, "host model exploded"},
		{"panic", func(*Params) (Metrics, error) { panic("gradient of doom") }, "gradient of doom"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ev := must(NewEvaluator(tc.fn))
			defer ev.Close()
			_, err := InterpolationCurve(ctx, ev, init, fin, live, []float64{0, 1}, -1)
			if !errors.Is(err, ErrCallback) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("error %v, want ErrCallback with %q", err, tc.msg)
			}
			if _, err := ev.Evaluate(live); !errors.Is(err, ErrCallback) {
				t.Fatalf("Evaluate: %v", err)
			}
		})
	}
	if _, err := NewEvaluator(nil); !errors.Is(err, ErrNullArgument) {
		t.Errorf("nil function: %v", err)
	}
	ev := must(NewEvaluator((&quadratic{}).eval))
	ev.Close()
	ev.Close()
	if _, err := ev.Evaluate(live); !errors.Is(err, ErrNullArgument) {
		t.Errorf("closed evaluator: %v", err)
	}
}

func TestAnalysisMLP(t *testing.T) {
	ctx := must(NewCPUContext())
	defer ctx.Close()
	sizes := []uint64{4, 6, 3}
	const rows = 40
	g := &rng{s: 17}
	x := make([]float32, rows*4)
	y := make([]uint32, rows)
	for i := 0; i < rows; i++ {
		for j := 0; j < 4; j++ {
			x[i*4+j] = float32(g.normal())
		}
		if x[i*4] > 0 {
			y[i]++
		}
		if x[i*4+1] > 0.5 {
			y[i]++
		}
	}
	ev := must(NewMLPEvaluator(sizes, x, y))
	defer ev.Close()
	p1, p2 := must(MLPInit(sizes, 1)), must(MLPInit(sizes, 2))
	defer p1.Close()
	defer p2.Close()
	live := must(p2.Clone())
	defer live.Close()
	m := must(ev.Evaluate(p2))
	if m.Loss <= 0 || math.Abs(m.Accuracy+m.Error-1) > 1e-12 {
		t.Fatalf("metrics %+v", m)
	}
	r := must(RewindCurve(ctx, ev, p1, p2, live, 1, []float64{1, 0.5}))
	if r[0] != m {
		t.Errorf("rewind at alpha 1 %+v, want %+v", r[0], m)
	}
	o := ReferenceCriticalityOptions()
	o.NoiseRelative, o.Samples, o.Seed = true, 3, 11
	m1, s1, err := NetworkCriticality(ctx, ev, Path{Init: p1, Final: p2}, live, &o)
	if err != nil {
		t.Fatal(err)
	}
	m2, s2, _ := NetworkCriticality(ctx, ev, Path{Init: p1, Final: p2}, live, &o)
	if !reflect.DeepEqual(m1, m2) || s1 != s2 || s1.Total != m1[0].Value+m1[1].Value || s1.Eps != 1.01*s1.FinalMetric {
		t.Errorf("network criticality %+v %+v / %+v %+v", m1, s1, m2, s2)
	}
	errs := []struct {
		name   string
		sizes  []uint64
		x      []float32
		labels []uint32
		want   error
	}{
		{"one class", []uint64{4, 1}, x, y, ErrInvalidArgument},
		{"short x", sizes, x[:3], y, ErrShapeMismatch},
		{"label out of range", sizes, x, append([]uint32{9}, y[1:]...), ErrInvalidArgument},
	}
	for _, tc := range errs {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewMLPEvaluator(tc.sizes, tc.x, tc.labels); !errors.Is(err, tc.want) {
				t.Errorf("error %v, want %v", err, tc.want)
			}
		})
	}
}

func TestDataTools(t *testing.T) {
	orig := make([]float32, 32)
	for i := range orig {
		orig[i] = float32(i)
	}
	shuffles := []struct {
		name     string
		n, block uint64
		identity bool
		want     error
	}{
		{"block = size is the identity", 2, 4, true, nil},
		{"blocks of 2", 2, 2, false, nil},
		{"block does not divide", 2, 3, false, ErrInvalidArgument},
		{"slice length", 3, 2, false, ErrShapeMismatch},
	}
	for _, tc := range shuffles {
		t.Run("shuffle/"+tc.name, func(t *testing.T) {
			img := append([]float32(nil), orig...)
			err := BlockShuffle(img, tc.n, 1, 4, 4, tc.block, 5)
			if tc.want != nil {
				if !errors.Is(err, tc.want) {
					t.Fatalf("error %v, want %v", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if reflect.DeepEqual(img, orig) != tc.identity {
				t.Fatalf("shuffled %v", img)
			}
			for i := 0; i < 16; i++ { // the same permutation in both images
				if img[16+i] != img[i]+16 {
					t.Fatalf("images permuted differently: %v", img)
				}
			}
		})
	}
	ag, err := PredictionAgreement([]uint32{0, 1, 9, 9, 7, 5}, []uint32{0, 8, 2, 9, 6, 5}, []uint32{0, 1, 2, 3, 4, 5})
	if err != nil || ag.Counts != [5]uint64{2, 1, 1, 1, 1} || !reflect.DeepEqual(ag.Category, []uint8{0, 1, 2, 3, 4, 0}) {
		t.Fatalf("agreement %+v, %v", ag, err)
	}
	if _, err := PredictionAgreement([]uint32{0}, []uint32{0, 1}, []uint32{0, 1}); !errors.Is(err, ErrShapeMismatch) {
		t.Errorf("lengths: %v", err)
	}
}
