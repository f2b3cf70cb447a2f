package transferlens

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// ---- reference: plain f64 formulas, written independently of the library ----------------------

// dense is row-major n x p.
type dense struct {
	n, p int
	v    []float64
}

func (d dense) at(r, c int) float64 { return d.v[r*d.p+c] }

// rng: splitmix64 normals, reproducible.
type rng struct{ s uint64 }

func (g *rng) uniform() float64 {
	g.s += 0x9e3779b97f4a7c15
	z := g.s
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	z ^= z >> 31
	return (float64(z>>11) + 0.5) / 9007199254740992.0
}

func (g *rng) normal() float64 {
	return math.Sqrt(-2*math.Log(g.uniform())) * math.Cos(2*math.Pi*g.uniform())
}

func (g *rng) dense(n, p int) dense {
	d := dense{n, p, make([]float64, n*p)}
	for i := range d.v {
		d.v[i] = g.normal()
	}
	return d
}

// mix returns x W + noise: a layer correlated with x.
func (g *rng) mix(x dense, q int, noise float64) dense {
	w := g.dense(x.p, q)
	y := dense{x.n, q, make([]float64, x.n*q)}
	for r := 0; r < x.n; r++ {
		for j := 0; j < q; j++ {
			s := 0.0
			for c := 0; c < x.p; c++ {
				s += x.at(r, c) * w.v[c*q+j]
			}
			y.v[r*q+j] = s + noise*g.normal()
		}
	}
	return y
}

func centered(d dense) dense {
	out := dense{d.n, d.p, append([]float64(nil), d.v...)}
	for c := 0; c < d.p; c++ {
		m := 0.0
		for r := 0; r < d.n; r++ {
			m += d.at(r, c)
		}
		m /= float64(d.n)
		for r := 0; r < d.n; r++ {
			out.v[r*d.p+c] -= m
		}
	}
	return out
}

// refHSIC: feature-space HSIC of centered data (Kornblith et al. 2019); debiased: the
// U-statistic of Song et al. (2012) in its feature-space form.
func refHSIC(x, y dense, debiased bool) float64 {
	fro := 0.0
	for i := 0; i < x.p; i++ {
		for j := 0; j < y.p; j++ {
			s := 0.0
			for r := 0; r < x.n; r++ {
				s += x.at(r, i) * y.at(r, j)
			}
			fro += s * s
		}
	}
	if !debiased {
		return fro
	}
	n := float64(x.n)
	dot, nx, ny := 0.0, 0.0, 0.0
	for r := 0; r < x.n; r++ {
		a, b := 0.0, 0.0
		for i := 0; i < x.p; i++ {
			a += x.at(r, i) * x.at(r, i)
		}
		for j := 0; j < y.p; j++ {
			b += y.at(r, j) * y.at(r, j)
		}
		dot += a * b
		nx += a
		ny += b
	}
	return fro - n/(n-2)*dot + nx*ny/((n-1)*(n-2))
}

func refCKA(x, y dense, debiased bool) float64 {
	x, y = centered(x), centered(y)
	return refHSIC(x, y, debiased) / math.Sqrt(refHSIC(x, x, debiased)*refHSIC(y, y, debiased))
}

func f32s(d dense) []float32 {
	out := make([]float32, len(d.v))
	for i, v := range d.v {
		out[i] = float32(v)
	}
	return out
}

// roundTo returns d with every value replaced by conv(value): what the library sees of it.
func roundTo(d dense, conv func(float64) float64) dense {
	out := dense{d.n, d.p, make([]float64, len(d.v))}
	for i, v := range d.v {
		out.v[i] = conv(v)
	}
	return out
}

// IEEE half and bfloat16 bit patterns (round to nearest even) and back.
func f16Bits(f float32) uint16 {
	x := math.Float32bits(f)
	sign := uint16((x >> 16) & 0x8000)
	exp := int((x>>23)&0xff) - 127 + 15
	mant := x & 0x7fffff
	if exp <= 0 {
		if exp < -10 {
			return sign
		}
		mant |= 0x800000
		shift := uint(14 - exp)
		half := mant >> shift
		rest, mid := mant&((1<<shift)-1), uint32(1)<<(shift-1)
		if rest > mid || (rest == mid && half&1 == 1) {
			half++
		}
		return sign | uint16(half)
	}
	half := uint32(exp)<<10 | mant>>13
	rest := mant & 0x1fff
	if rest > 0x1000 || (rest == 0x1000 && half&1 == 1) {
		half++
	}
	return sign | uint16(half)
}

func f16Value(h uint16) float64 {
	exp := int(h>>10) & 0x1f
	mant := float64(h & 0x3ff)
	v := math.Ldexp(1024+mant, exp-25)
	if exp == 0 {
		v = math.Ldexp(mant, -24)
	}
	if h&0x8000 != 0 {
		return -v
	}
	return v
}

func bf16Bits(f float32) uint16 {
	x := math.Float32bits(f)
	x += 0x7fff + (x>>16)&1
	return uint16(x >> 16)
}

func bf16Value(b uint16) float64 { return float64(math.Float32frombits(uint32(b) << 16)) }

func closeTo(t *testing.T, what string, got, want, tol float64) {
	t.Helper()
	if !(math.Abs(got-want) <= tol*math.Max(1, math.Abs(want))) {
		t.Fatalf("%s = %.17g, want %.17g (tolerance %g)", what, got, want, tol)
	}
}

// must returns v, or panics on an error (which fails the test with a stack trace).
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func noErr(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func cpu(t *testing.T) *Context {
	t.Helper()
	ctx := must(NewCPUContext())
	t.Cleanup(func() { ctx.Close() })
	return ctx
}

// ---- tests -------------------------------------------------------------------------------------

func TestVersions(t *testing.T) {
	if Version() != HeaderVersion {
		t.Fatalf("library %s, header %s", Version(), HeaderVersion)
	}
	if ABIVersion() != HeaderABIVersion {
		t.Fatalf("library ABI %d, header ABI %d", ABIVersion(), HeaderABIVersion)
	}
}

func TestStatusNames(t *testing.T) {
	for _, tc := range []struct {
		s    Status
		name string
	}{
		{StatusOK, "TL_STATUS_OK"}, {StatusNullArgument, "TL_STATUS_NULL_ARGUMENT"},
		{StatusInvalidArgument, "TL_STATUS_INVALID_ARGUMENT"}, {StatusShapeMismatch, "TL_STATUS_SHAPE_MISMATCH"},
		{StatusUnsupportedDType, "TL_STATUS_UNSUPPORTED_DTYPE"}, {StatusDegenerateInput, "TL_STATUS_DEGENERATE_INPUT"},
		{StatusNonFinite, "TL_STATUS_NON_FINITE"}, {StatusIO, "TL_STATUS_IO"}, {StatusFormat, "TL_STATUS_FORMAT"},
		{StatusNotFound, "TL_STATUS_NOT_FOUND"}, {StatusDeviceUnavailable, "TL_STATUS_DEVICE_UNAVAILABLE"},
		{StatusDevice, "TL_STATUS_DEVICE"}, {StatusCallback, "TL_STATUS_CALLBACK"}, {StatusPanic, "TL_STATUS_PANIC"},
		{Status(99), "TL_STATUS_UNKNOWN"},
	} {
		if got := tc.s.String(); got != tc.name {
			t.Errorf("Status(%d).String() = %q, want %q", uint32(tc.s), got, tc.name)
		}
	}
}

func TestContext(t *testing.T) {
	ctx := must(NewCPUContext())
	if b := must(ctx.Backend()); b != BackendCPU {
		t.Fatalf("backend %d, want CPU", b)
	}
	ctx.Close()
	ctx.Close() // twice is a no-op
	if _, err := ctx.Backend(); !errors.Is(err, ErrNullArgument) {
		t.Fatalf("Backend after Close: %v, want ErrNullArgument", err)
	}
	auto := must(NewContext(BackendAuto, 0))
	defer auto.Close()
	if b := must(auto.Backend()); b != BackendCPU && b != BackendCUDA {
		t.Fatalf("AUTO resolved to %d", b)
	}
	// CUDA asked for explicitly: a context where a device exists, else ErrDeviceUnavailable.
	if cuda, err := NewContext(BackendCUDA, 0); err == nil {
		defer cuda.Close()
		if b := must(cuda.Backend()); b != BackendCUDA {
			t.Fatalf("a CUDA context reports backend %d", b)
		}
	} else if !errors.Is(err, ErrDeviceUnavailable) || err.(*Error).Message == "" {
		t.Fatalf("CUDA context: %v, want ErrDeviceUnavailable with a message", err)
	}
	if _, err := NewContext(Backend(7), 0); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("backend 7: %v", err)
	}
	// Forgotten contexts are freed by their finalizer (this must not crash).
	for i := 0; i < 10; i++ {
		_, _ = NewCPUContext()
	}
	runtime.GC()
}

func TestCKALinear(t *testing.T) {
	ctx := cpu(t)
	g := &rng{s: 11}
	// Awkward sizes: few samples, odd widths, more features than samples.
	shapes := []struct{ n, p, q int }{{5, 1, 3}, {17, 7, 5}, {9, 33, 2}, {64, 12, 12}}
	type input struct {
		name string
		tol  float64
		view func(d dense) (Matrix, dense) // the view and the values the library sees
	}
	inputs := []input{
		{"f64", 1e-10, func(d dense) (Matrix, dense) { return must(NewMatrix(d.v, d.n, d.p)), d }},
		{"f32", 1e-5, func(d dense) (Matrix, dense) {
			return must(NewMatrix(f32s(d), d.n, d.p)), roundTo(d, func(v float64) float64 { return float64(float32(v)) })
		}},
		{"f64 strided", 1e-10, func(d dense) (Matrix, dense) {
			wide := make([]float64, d.n*(d.p+3))
			for i := range wide {
				wide[i] = 1e300 // padding that would poison the result if read
			}
			for r := 0; r < d.n; r++ {
				copy(wide[r*(d.p+3):], d.v[r*d.p:(r+1)*d.p])
			}
			return must(NewStridedMatrix(wide, d.n, d.p, d.p+3)), d
		}},
		{"f16", 1e-5, func(d dense) (Matrix, dense) {
			bits := make([]uint16, len(d.v))
			for i, v := range d.v {
				bits[i] = f16Bits(float32(v))
			}
			return must(NewMatrix16(bits, F16, d.n, d.p, 0)), roundTo(d, func(v float64) float64 { return f16Value(f16Bits(float32(v))) })
		}},
		{"bf16", 1e-5, func(d dense) (Matrix, dense) {
			bits := make([]uint16, len(d.v))
			for i, v := range d.v {
				bits[i] = bf16Bits(float32(v))
			}
			return must(NewMatrix16(bits, BF16, d.n, d.p, 0)), roundTo(d, func(v float64) float64 { return bf16Value(bf16Bits(float32(v))) })
		}},
	}
	for _, sh := range shapes {
		x := g.dense(sh.n, sh.p)
		y := g.mix(x, sh.q, 0.5)
		for _, in := range inputs {
			for _, est := range []Estimator{Biased, Debiased} {
				name := fmt.Sprintf("%dx%d-%d/%s/est%d", sh.n, sh.p, sh.q, in.name, est)
				t.Run(name, func(t *testing.T) {
					mx, rx := in.view(x)
					my, ry := in.view(y)
					got := must(ctx.CKALinear(mx, my, est))
					closeTo(t, name, got, refCKA(rx, ry, est == Debiased), in.tol)
				})
			}
		}
	}
}

func TestErrors(t *testing.T) {
	ctx := cpu(t)
	g := &rng{s: 5}
	ok := g.dense(6, 2)
	three := g.dense(3, 2)
	nan := g.dense(6, 2)
	nan.v[7] = math.NaN()
	flat := make([]float64, 12)
	for i := range flat {
		flat[i] = 2.5
	}
	m := func(d dense) Matrix { return must(NewMatrix(d.v, d.n, d.p)) }
	for _, tc := range []struct {
		name string
		call func() error
		want error
	}{
		{"too few samples for debiased", func() error {
			_, err := ctx.CKALinear(m(three), m(three), Debiased)
			return err
		}, ErrDegenerateInput},
		{"no variance", func() error {
			_, err := ctx.CKALinear(must(NewMatrix(flat, 6, 2)), m(ok), Biased)
			return err
		}, ErrDegenerateInput},
		{"NaN", func() error { _, err := ctx.CKALinear(m(nan), m(ok), Biased); return err }, ErrNonFinite},
		{"rows differ", func() error { _, err := ctx.CKALinear(m(ok), m(three), Biased); return err }, ErrShapeMismatch},
		{"bad estimator", func() error { _, err := ctx.CKALinear(m(ok), m(ok), Estimator(9)); return err }, ErrInvalidArgument},
		{"short slice", func() error { _, err := NewMatrix(make([]float32, 11), 4, 3); return err }, ErrShapeMismatch},
		{"short strided slice", func() error { _, err := NewStridedMatrix(make([]float64, 12), 3, 3, 5); return err }, ErrShapeMismatch},
		{"stride below cols", func() error { _, err := NewStridedMatrix(make([]float64, 12), 3, 3, 2); return err }, ErrInvalidArgument},
		{"uint16 as F32", func() error { _, err := NewMatrix16(make([]uint16, 4), F32, 2, 2, 0); return err }, ErrInvalidArgument},
		{"no layers", func() error { _, err := ctx.CKAMatrix(nil, []Matrix{m(ok)}, Biased); return err }, ErrInvalidArgument},
		{"zero layers", func() error { _, err := NewCKAAccumulator(ctx, 0, 1, Biased); return err }, ErrInvalidArgument},
		{"the zero Matrix (an empty host view)", func() error {
			_, err := ctx.CKALinear(Matrix{}, m(ok), Biased)
			return err
		}, ErrInvalidArgument},
		{"device memory on a CPU context", func() error {
			d := must(NewDeviceMatrix(0x1000, F32, 0, 6, 2, 0))
			if d.OnDevice() != 0 || m(ok).OnDevice() != -1 {
				t.Fatalf("OnDevice: %d and %d", d.OnDevice(), m(ok).OnDevice())
			}
			_, err := ctx.CKALinear(d, m(ok), Biased)
			return err
		}, nil}, // any *Error: which one depends on the machine
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("got %v, want an *Error", err)
			}
			if e.Message == "" {
				t.Fatalf("%v has no message", err)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if !strings.HasPrefix(err.Error(), "transferlens: TL_STATUS_") {
				t.Fatalf("error text %q", err.Error())
			}
		})
	}
}

// The library's message is per OS thread: goroutines failing at once must each get their own.
func TestErrorMessagesAcrossGoroutines(t *testing.T) {
	ctx := cpu(t)
	g := &rng{s: 3}
	ok := g.dense(8, 3)
	three := g.dense(3, 3)
	nan := g.dense(8, 3)
	nan.v[4] = math.Inf(1)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				var err error
				var want error
				if (w+i)%2 == 0 {
					_, err = ctx.CKALinear(must(NewMatrix(three.v, 3, 3)), must(NewMatrix(three.v, 3, 3)), Debiased)
					want = ErrDegenerateInput
				} else {
					_, err = ctx.CKALinear(must(NewMatrix(nan.v, 8, 3)), must(NewMatrix(ok.v, 8, 3)), Biased)
					want = ErrNonFinite
				}
				var e *Error
				if !errors.Is(err, want) || !errors.As(err, &e) || e.Message == "" {
					errs <- fmt.Errorf("goroutine %d: got %v, want %v with a message", w, err, want)
					return
				}
				runtime.Gosched()
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestCKAMatrix(t *testing.T) {
	ctx := cpu(t)
	g := &rng{s: 21}
	a := g.dense(21, 6)
	b := g.mix(a, 4, 0.3)
	c := g.mix(b, 9, 1.0)
	d := g.mix(a, 3, 2.0)
	e := g.dense(21, 5)
	xs, ys := []dense{a, b, c}, []dense{d, e}
	views := func(ds []dense) []Matrix {
		out := make([]Matrix, len(ds))
		for i, x := range ds {
			out[i] = must(NewMatrix(f32s(x), x.n, x.p))
		}
		return out
	}
	f32of := func(v float64) float64 { return float64(float32(v)) }
	for _, est := range []Estimator{Biased, Debiased} {
		got := must(ctx.CKAMatrix(views(xs), views(ys), est))
		if len(got) != 3 || len(got[0]) != 2 {
			t.Fatalf("shape %dx%d", len(got), len(got[0]))
		}
		for i := range xs {
			for j := range ys {
				closeTo(t, fmt.Sprintf("est %d [%d][%d]", est, i, j), got[i][j],
					refCKA(roundTo(xs[i], f32of), roundTo(ys[j], f32of), est == Debiased), 1e-5)
			}
		}
	}
}

func TestAccumulator(t *testing.T) {
	ctx := cpu(t)
	g := &rng{s: 37}
	const n = 37
	x0 := g.dense(n, 5)
	x1 := g.mix(x0, 3, 0.4)
	y0 := g.mix(x0, 4, 1.0)
	x1o := roundTo(x1, func(v float64) float64 { return v + 1000 }) // an offset the shift must absorb
	fx0, fx1, fy0 := must(NewMatrix(x0.v, n, 5)), must(NewMatrix(x1o.v, n, 3)), must(NewMatrix(y0.v, n, 4))
	batch := func(lo, count int) ([]Matrix, []Matrix) {
		return []Matrix{must(fx0.Rows(lo, count)), must(fx1.Rows(lo, count))}, []Matrix{must(fy0.Rows(lo, count))}
	}
	for _, est := range []Estimator{Biased, Debiased} {
		deb := est == Debiased
		acc := must(NewCKAAccumulator(ctx, 2, 1, est))
		defer acc.Close()
		if ls, lm, err := acc.StateSize(); err != nil || ls != 0 || lm != 0 {
			t.Fatalf("state size before data: %d %d %v", ls, lm, err)
		}
		cuts := []int{0, 10, 11, 30, n} // uneven batches, one of a single row
		for k := 0; k+1 < len(cuts); k++ {
			xs, ys := batch(cuts[k], cuts[k+1]-cuts[k])
			if err := acc.Update(xs, ys); err != nil {
				t.Fatal(err)
			}
		}
		got := must(acc.Result())
		closeTo(t, "streamed [0][0]", got[0][0], refCKA(x0, y0, deb), 1e-9)
		closeTo(t, "streamed [1][0] (offset data)", got[1][0], refCKA(x1, y0, deb), 1e-9)

		// Merge: two halves give the whole.
		p, q := must(NewCKAAccumulator(ctx, 2, 1, est)), must(NewCKAAccumulator(ctx, 2, 1, est))
		defer p.Close()
		defer q.Close()
		xs, ys := batch(0, 15)
		noErr(t, p.Update(xs, ys))
		xs, ys = batch(15, n-15)
		noErr(t, q.Update(xs, ys))
		merged := must(NewCKAAccumulator(ctx, 2, 1, est))
		defer merged.Close()
		xs, ys = batch(0, 15)
		noErr(t, merged.Update(xs, ys))
		noErr(t, merged.Merge(q))
		closeTo(t, "merged", must(merged.Result())[1][0], got[1][0], 1e-10)

		// All-reduce: q rebases to p's shift, the moments are summed, a fresh one imports them.
		sp := must(p.Export())
		if sp.Moments[0] != 15 {
			t.Fatalf("moments[0] = %g, want the sample count 15", sp.Moments[0])
		}
		noErr(t, q.Rebase(sp.Shift))
		sq := must(q.Export())
		sum := State{Shift: sp.Shift, Moments: append([]float64(nil), sp.Moments...)}
		for i := range sum.Moments {
			sum.Moments[i] += sq.Moments[i]
		}
		fresh := must(NewCKAAccumulator(ctx, 2, 1, est))
		defer fresh.Close()
		noErr(t, fresh.SetWidths([]uint64{5, 3, 4}))
		noErr(t, fresh.Import(sum))
		r := must(fresh.Result())
		closeTo(t, "all-reduced [0][0]", r[0][0], got[0][0], 1e-9)
		closeTo(t, "all-reduced [1][0]", r[1][0], got[1][0], 1e-9)
	}

	// Errors, and the accumulator outliving its context.
	short, err := NewCPUContext()
	if err != nil {
		t.Fatal(err)
	}
	acc := must(NewCKAAccumulator(short, 1, 1, Biased))
	short.Close()
	x, y, z := g.dense(8, 3), g.dense(8, 2), g.dense(8, 4)
	m := func(d dense) []Matrix { return []Matrix{must(NewMatrix(d.v, d.n, d.p))} }
	if _, err := acc.Result(); !errors.Is(err, ErrDegenerateInput) {
		t.Fatalf("Result before data: %v", err)
	}
	if err := acc.Update(append(m(x), m(x)...), m(y)); !errors.Is(err, ErrShapeMismatch) {
		t.Fatalf("two x layers for one: %v", err)
	}
	noErr(t, acc.Update(m(x), m(y)))
	closeTo(t, "after its context closed", must(acc.Result())[0][0], refCKA(x, y, false), 1e-10)
	if err := acc.Update(m(z), m(y)); !errors.Is(err, ErrShapeMismatch) {
		t.Fatalf("other widths: %v", err)
	}
	if err := acc.SetWidths([]uint64{3, 2}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("SetWidths after data: %v", err)
	}
	if err := acc.Rebase([]float64{1}); !errors.Is(err, ErrShapeMismatch) {
		t.Fatalf("short shift: %v", err)
	}
	if err := acc.Import(State{Shift: []float64{0}, Moments: []float64{1}}); !errors.Is(err, ErrShapeMismatch) {
		t.Fatalf("short state: %v", err)
	}
	acc.Close()
	if err := acc.Update(m(x), m(y)); !errors.Is(err, ErrNullArgument) {
		t.Fatalf("Update after Close: %v", err)
	}
}

func TestRowsOfAView(t *testing.T) {
	data := []float64{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}
	m := must(NewMatrix(data, 4, 3))
	if _, err := m.Rows(3, 2); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("rows past the end: %v", err)
	}
	r := must(m.Rows(1, 2))
	if rows, cols := r.Shape(); rows != 2 || cols != 3 || r.DType() != F64 {
		t.Fatalf("shape %d x %d, dtype %d", rows, cols, r.DType())
	}
}
