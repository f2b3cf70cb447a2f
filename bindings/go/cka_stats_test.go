package transferlens

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
)

// The data of tests/c/cka_stats.c: y depends on x, with noise and an offset, and sample 17 of y
// is an outlier (scaled by 8).
const statsN, statsP, statsQ = 37, 5, 11

func statsData() (x, y dense) {
	g := &rng{s: 20}
	x = g.dense(statsN, statsP)
	y = dense{statsN, statsQ, make([]float64, statsN*statsQ)}
	for r := 0; r < statsN; r++ {
		for j := 0; j < statsQ; j++ {
			y.v[r*statsQ+j] = x.at(r, j%statsP)*(1+float64(j)) + 2*g.normal() + 3
		}
	}
	for j := 0; j < statsQ; j++ {
		y.v[17*statsQ+j] *= 8
	}
	return x, y
}

// without returns d less row skip.
func without(d dense, skip int) dense {
	out := dense{d.n - 1, d.p, nil}
	out.v = append(append(out.v, d.v[:skip*d.p]...), d.v[(skip+1)*d.p:]...)
	return out
}

func TestCKAStatisticsAgainstTheReference(t *testing.T) {
	ctx := cpu(t)
	x, y := statsData()
	mx, my := must(NewMatrix(x.v, statsN, statsP)), must(NewMatrix(y.v, statsN, statsQ))
	want := refCKA(x, y, false)

	d := DefaultCKAStatsOptions()
	if d != (CKAStatsOptions{Estimator: Biased, Resamples: 1000, Level: 0.95, Interval: IntervalJackknife}) {
		t.Fatalf("defaults %+v", d)
	}

	// Everything at once, with a percentile bootstrap interval.
	o := d
	o.Resamples, o.Permutations, o.Seed, o.Interval = 300, 49, 5, IntervalPercentile
	const top = 3
	s := must(ctx.CKAStatistics(mx, my, &o, top))
	t.Logf("CKA %.6f, interval [%.6f, %.6f], std error %.6f, p %.4f, null mean %.6f, top %v %v",
		s.CKA, s.Lower, s.Upper, s.StdError, s.PValue, s.NullMean, s.TopSamples, s.TopDeltas)
	close1(t, s.CKA, want, 1e-9, "CKA")
	if !(s.Lower < s.CKA && s.CKA < s.Upper && s.StdError > 0) {
		t.Fatalf("interval [%g, %g] (std error %g) around %g", s.Lower, s.Upper, s.StdError, s.CKA)
	}
	if s.Blocks != statsN || s.BlockSize != 1 || s.DegenerateResamples != 0 {
		t.Fatalf("%d blocks of at most %d, %d degenerate: want %d of 1, none", s.Blocks, s.BlockSize,
			s.DegenerateResamples, statsN)
	}
	// y depends on x: no permutation reaches the observed value.
	if s.PValue != 1.0/50 || !(s.NullMean < s.CKA) || !(s.NullStd > 0) {
		t.Fatalf("p-value %g (want 1/50), null mean %g, null std %g", s.PValue, s.NullMean, s.NullStd)
	}
	if len(s.TopSamples) != top || len(s.TopDeltas) != top || s.TopSamples[0] != 17 {
		t.Fatalf("top samples %v (want 3, the outlier 17 first)", s.TopSamples)
	}
	for k, i := range s.TopSamples {
		close1(t, s.CKA+s.TopDeltas[k], refCKA(without(x, int(i)), without(y, int(i)), false), 1e-9,
			fmt.Sprintf("CKA without sample %d", i))
		if k > 0 && math.Abs(s.TopDeltas[k]) > math.Abs(s.TopDeltas[k-1]) {
			t.Fatalf("deltas %v are not by decreasing size", s.TopDeltas)
		}
	}

	// The debiased estimator's influence, over every sample (top past the rows gives them all).
	deb := d
	deb.Estimator, deb.Resamples = Debiased, 0
	all := must(ctx.CKAStatistics(mx, my, &deb, statsN+5))
	close1(t, all.CKA, refCKA(x, y, true), 1e-9, "debiased CKA")
	if len(all.TopSamples) != statsN {
		t.Fatalf("%d influential samples of %d", len(all.TopSamples), statsN)
	}
	for k, i := range all.TopSamples {
		close1(t, all.CKA+all.TopDeltas[k], refCKA(without(x, int(i)), without(y, int(i)), true), 1e-9,
			fmt.Sprintf("debiased CKA without sample %d", i))
	}

	// The same seed gives the same interval; nil options are the defaults.
	again := must(ctx.CKAStatistics(mx, my, &o, 0))
	if again.Lower != s.Lower || again.Upper != s.Upper || len(again.TopSamples) != 0 {
		t.Fatalf("seed 5 again: [%g, %g], %d top samples; first [%g, %g]", again.Lower, again.Upper,
			len(again.TopSamples), s.Lower, s.Upper)
	}
	if !math.IsNaN(s.JackknifeEstimate) || math.IsNaN(s.BiasCorrection) || !math.IsNaN(s.Acceleration) {
		t.Fatalf("a percentile interval: %+v", s)
	}
	bca := o
	bca.Interval = IntervalBCa
	if byBCa := must(ctx.CKAStatistics(mx, my, &bca, 0)); byBCa.StdError != s.StdError || math.IsNaN(byBCa.Acceleration) {
		t.Fatalf("BCa from the same resamples: %+v against %+v", byBCa, s)
	}

	// nil options are the defaults: the jackknife interval, here against the reference's
	// leave-one-out values (centre n CKA - (n - 1) mean, half-width z sqrt((n - 1) / n sum d^2)).
	byDefault := must(ctx.CKAStatistics(mx, my, nil, 0))
	var mean, spread float64
	leftOut := make([]float64, statsN)
	for i := range leftOut {
		leftOut[i] = refCKA(without(x, i), without(y, i), false)
		mean += leftOut[i] / statsN
	}
	for _, v := range leftOut {
		spread += (v - mean) * (v - mean)
	}
	centre, se := statsN*want-(statsN-1)*mean, math.Sqrt((statsN-1.0)/statsN*spread)
	const z95 = 1.959963984540054
	close1(t, byDefault.JackknifeEstimate, centre, 1e-9, "jackknife estimate")
	close1(t, byDefault.StdError, se, 1e-9, "jackknife standard error")
	close1(t, byDefault.Lower, centre-z95*se, 1e-9, "jackknife lower end")
	close1(t, byDefault.Upper, centre+z95*se, 1e-9, "jackknife upper end")
	if byDefault.Blocks != 0 || !math.IsNaN(byDefault.PValue) || !math.IsNaN(byDefault.BiasCorrection) {
		t.Fatalf("default statistics %+v", byDefault)
	}

	// Nothing asked for: the CKA alone, every statistic NaN.
	none := d
	none.Resamples = 0
	alone := must(ctx.CKAStatistics(mx, my, &none, 0))
	close1(t, alone.CKA, want, 1e-9, "CKA alone")
	if !math.IsNaN(alone.Lower) || !math.IsNaN(alone.Upper) || !math.IsNaN(alone.PValue) || alone.Blocks != 0 {
		t.Fatalf("statistics not asked for: %+v", alone)
	}

	// f32 data: the same figures to f32 precision.
	x32, y32 := f32s(x), f32s(y)
	s32 := must(ctx.CKAStatistics(must(NewMatrix(x32, statsN, statsP)), must(NewMatrix(y32, statsN, statsQ)), &none, 1))
	close1(t, s32.CKA, want, 1e-5, "CKA of f32 data")
	if s32.TopSamples[0] != 17 {
		t.Fatalf("f32 data: top sample %d, want 17", s32.TopSamples[0])
	}
}

func TestCKAStatisticsErrors(t *testing.T) {
	ctx := cpu(t)
	x, y := statsData()
	mx, my := must(NewMatrix(x.v, statsN, statsP)), must(NewMatrix(y.v, statsN, statsQ))
	o := DefaultCKAStatsOptions()
	o.Resamples, o.Permutations, o.Interval = 50, 9, IntervalPercentile
	with := func(f func(*CKAStatsOptions)) *CKAStatsOptions {
		c := o
		f(&c)
		return &c
	}
	closedCtx := must(NewCPUContext())
	closedCtx.Close()
	constant := make([]float64, statsN*2)
	for i := range constant {
		constant[i] = 1.5
	}
	nan := append([]float64(nil), y.v...)
	nan[5*statsQ+2] = math.NaN()
	debiasedOnly := with(func(c *CKAStatsOptions) { c.Estimator, c.Resamples, c.Permutations = Debiased, 0, 0 })
	onDevice := must(NewDeviceMatrix(0x1000, F64, 0, statsN, statsQ, statsQ))

	err := func(_ any, err error) error { return err }
	cases := []struct {
		name    string
		err     error
		want    *Error
		message string
	}{
		{"nil context", err((*Context)(nil).CKAStatistics(mx, my, &o, 0)), ErrNullArgument, ""},
		{"closed context", err(closedCtx.CKAStatistics(mx, my, &o, 0)), ErrNullArgument, ""},
		{"negative top", err(ctx.CKAStatistics(mx, my, &o, -1)), ErrInvalidArgument, "top"},
		{"level past 1", err(ctx.CKAStatistics(mx, my, with(func(c *CKAStatsOptions) { c.Level = 1.5 }), 0)),
			ErrInvalidArgument, "level"},
		{"one resample", err(ctx.CKAStatistics(mx, my, with(func(c *CKAStatsOptions) { c.Resamples = 1 }), 0)),
			ErrInvalidArgument, "resamples"},
		{"more blocks than samples", err(ctx.CKAStatistics(mx, my, with(func(c *CKAStatsOptions) { c.Blocks = statsN + 1 }), 0)),
			ErrInvalidArgument, "blocks"},
		{"unknown interval", err(ctx.CKAStatistics(mx, my, with(func(c *CKAStatsOptions) { c.Interval = 3 }), 0)),
			ErrInvalidArgument, "opts->interval"},
		{"unknown estimator", err(ctx.CKAStatistics(mx, my, with(func(c *CKAStatsOptions) { c.Estimator = 7 }), 0)),
			ErrInvalidArgument, "opts->estimator"},
		{"debiased influence of 4 samples", err(ctx.CKAStatistics(must(mx.Rows(0, 4)), must(my.Rows(0, 4)), debiasedOnly, 3)),
			ErrDegenerateInput, ""},
		{"a layer without variance", err(ctx.CKAStatistics(mx, must(NewMatrix(constant, statsN, 2)), &o, 0)),
			ErrDegenerateInput, ""},
		{"NaN", err(ctx.CKAStatistics(mx, must(NewMatrix(nan, statsN, statsQ)), &o, 0)), ErrNonFinite, "row 5"},
		{"rows differ", err(ctx.CKAStatistics(mx, must(my.Rows(0, statsN-1)), &o, 0)), ErrShapeMismatch, ""},
		{"rows differ, influence", err(ctx.CKAStatistics(mx, must(my.Rows(0, statsN-1)), debiasedOnly, 3)),
			ErrShapeMismatch, ""},
		{"device memory", err(ctx.CKAStatistics(mx, onDevice, &o, 0)), ErrInvalidArgument, "CUDA device 0"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var e *Error
			if !errors.Is(c.err, c.want) || !errors.As(c.err, &e) || e.Message == "" {
				t.Fatalf("got %v, want %v with a message", c.err, c.want)
			}
			if !strings.Contains(e.Message, c.message) {
				t.Fatalf("the message %q does not name %s", e.Message, c.message)
			}
		})
	}
}
