package transferlens

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
)

// A dense chain in, h1, h2, out, as PyTorch lays it out: weights [out, in], row-major. Weight
// matching is a local search (coordinate descent over the groups), and on narrow chains it can
// stop short of an exact copy's permutation: of 199 random chains 5-7-6-3 permuted as below, 32
// stopped at a local optimum, against 1 of 199 with 12 inputs. Wide inputs make the first
// group's match, and so the recovery, clear-cut.
const chainIn, chainH1, chainH2, chainOut = 12, 7, 6, 3

type chain struct {
	w1, b1, w2, b2, w3, b3 []float32
}

func randomChain(g *rng) chain {
	f := func(n int) []float32 {
		out := make([]float32, n)
		for i := range out {
			out[i] = float32(g.normal())
		}
		return out
	}
	return chain{f(chainH1 * chainIn), f(chainH1), f(chainH2 * chainH1), f(chainH2), f(chainOut * chainH2), f(chainOut)}
}

// permuted returns the chain whose hidden unit i of layer 1 is c's unit s1[i] (and likewise
// s2 for layer 2), written here without the library: the same function as c.
func (c chain) permuted(s1, s2 []int) chain {
	p := chain{make([]float32, len(c.w1)), make([]float32, len(c.b1)), make([]float32, len(c.w2)),
		make([]float32, len(c.b2)), make([]float32, len(c.w3)), append([]float32(nil), c.b3...)}
	for i := 0; i < chainH1; i++ {
		copy(p.w1[i*chainIn:(i+1)*chainIn], c.w1[s1[i]*chainIn:(s1[i]+1)*chainIn])
		p.b1[i] = c.b1[s1[i]]
	}
	for i := 0; i < chainH2; i++ {
		for j := 0; j < chainH1; j++ {
			p.w2[i*chainH1+j] = c.w2[s2[i]*chainH1+s1[j]]
		}
		p.b2[i] = c.b2[s2[i]]
	}
	for o := 0; o < chainOut; o++ {
		for j := 0; j < chainH2; j++ {
			p.w3[o*chainH2+j] = c.w3[o*chainH2+s2[j]]
		}
	}
	return p
}

func (c chain) wrap(t *testing.T, ctx *Context) *Params {
	t.Helper()
	p := must(WrapParams(ctx, []Tensor{
		must(NewTensor("enc.weight", c.w1, chainH1, chainIn)), must(NewTensor("enc.bias", c.b1, chainH1)),
		must(NewTensor("mid.weight", c.w2, chainH2, chainH1)), must(NewTensor("mid.bias", c.b2, chainH2)),
		must(NewTensor("head.weight", c.w3, chainOut, chainH2)), must(NewTensor("head.bias", c.b3, chainOut)),
	}))
	t.Cleanup(func() { p.Close() })
	return p
}

// readChain reads a set's tensors back (an aligned set the library made).
func readChain(t *testing.T, p *Params) chain {
	t.Helper()
	r := func(name string) []float32 { return must(p.TensorF32(name)) }
	return chain{r("enc.weight"), r("enc.bias"), r("mid.weight"), r("mid.bias"), r("head.weight"), r("head.bias")}
}

// forward runs the chain (ReLU between layers) on one input: the hidden activations and the
// outputs, in f64.
func (c chain) forward(x []float64) (h1, h2, out []float64) {
	layer := func(w, b []float32, in []float64, relu bool) []float64 {
		o := make([]float64, len(b))
		for i := range o {
			s := float64(b[i])
			for j, v := range in {
				s += float64(w[i*len(in)+j]) * v
			}
			if relu {
				s = math.Max(s, 0)
			}
			o[i] = s
		}
		return o
	}
	h1 = layer(c.w1, c.b1, x, true)
	h2 = layer(c.w2, c.b2, h1, true)
	return h1, h2, layer(c.w3, c.b3, h2, false)
}

// flat joins the two groups' permutations as the library lays them out.
func flat(s1, s2 []int) []uint64 {
	out := make([]uint64, 0, len(s1)+len(s2))
	for _, v := range s1 {
		out = append(out, uint64(v))
	}
	for _, v := range s2 {
		out = append(out, uint64(v))
	}
	return out
}

// checkInverse fails unless found (flat, per group of the given sizes) is the inverse of hidden:
// hidden[found[i]] == i within each group.
func checkInverse(t *testing.T, found, hidden []uint64, sizes ...int) {
	t.Helper()
	off := 0
	for g, n := range sizes {
		for i := 0; i < n; i++ {
			if f := found[off+i]; f >= uint64(n) || hidden[off+int(f)] != uint64(i) {
				t.Fatalf("group %d: found %v is not the inverse of %v", g, found[off:off+n], hidden[off:off+n])
			}
		}
		off += n
	}
}

func sameTensors(t *testing.T, got, want chain, what string) {
	t.Helper()
	for k, pair := range [][2][]float32{{got.w1, want.w1}, {got.b1, want.b1}, {got.w2, want.w2}, {got.b2, want.b2},
		{got.w3, want.w3}, {got.b3, want.b3}} {
		for i := range pair[1] {
			if math.Float32bits(pair[0][i]) != math.Float32bits(pair[1][i]) {
				t.Fatalf("%s: tensor %d element %d is %v, want %v", what, k, i, pair[0][i], pair[1][i])
			}
		}
	}
}

func TestAlignDenseChain(t *testing.T) {
	ctx := cpu(t)
	g := &rng{s: 18}
	a := randomChain(g)
	s1, s2 := []int{3, 0, 6, 1, 5, 2, 4}, []int{5, 4, 3, 2, 1, 0}
	b := a.permuted(s1, s2)
	pa, pb := a.wrap(t, ctx), b.wrap(t, ctx)

	spec := must(InferPermSpec(pa))
	defer spec.Close()
	if spec.GroupCount() != 2 || spec.Units() != chainH1+chainH2 {
		t.Fatalf("inferred %d groups of %d units, want 2 of %d", spec.GroupCount(), spec.Units(), chainH1+chainH2)
	}
	if n := must(spec.GroupSize(1)); n != chainH2 {
		t.Fatalf("group 1 has %d units, want %d", n, chainH2)
	}
	noErr(t, spec.Check(pb))

	// Weight matching recovers the inverse of the hidden permutation, and applying it gives A back
	// bit for bit.
	before := must(pa.Distance(ctx, pb)).Total
	if before < 0.1 {
		t.Fatalf("the permuted chain is only %g from A", before)
	}
	found := must(AlignWeights(spec, pa, pb, nil))
	if !found.Converged || found.Passes < 1 {
		t.Fatalf("weight matching: converged %v after %d passes", found.Converged, found.Passes)
	}
	checkInverse(t, found.Perms, flat(s1, s2), chainH1, chainH2)
	aligned := must(AlignApply(spec, pb, found.Perms))
	defer aligned.Close()
	if d := must(pa.Distance(ctx, aligned)).Total; d != 0 {
		t.Fatalf("distance of A to B aligned is %g, want 0", d)
	}
	sameTensors(t, readChain(t, aligned), a, "B aligned to A")

	// Activation matching on the chain's hidden activations finds the same permutation.
	const rows = 50
	x := g.dense(rows, chainIn)
	acts := func(c chain) (h1, h2 []float64) {
		for r := 0; r < rows; r++ {
			a1, a2, _ := c.forward(x.v[r*chainIn : (r+1)*chainIn])
			h1, h2 = append(h1, a1...), append(h2, a2...)
		}
		return h1, h2
	}
	a1, a2 := acts(a)
	b1, b2 := acts(b)
	perms := must(AlignActivations(ctx, spec,
		[]Matrix{must(NewMatrix(a1, rows, chainH1)), must(NewMatrix(a2, rows, chainH2))},
		[]Matrix{must(NewMatrix(b1, rows, chainH1)), must(NewMatrix(b2, rows, chainH2))}))
	checkInverse(t, perms, flat(s1, s2), chainH1, chainH2)

	// An independent chain C: aligned to A it is closer to A, computes the same function as C
	// on random inputs, and keeps its norm.
	c := randomChain(g)
	pc := c.wrap(t, ctx)
	opts := DefaultAlignOptions()
	if opts.MaxPasses != 100 || opts.Seed != 0 {
		t.Fatalf("defaults %+v, want 100 passes from seed 0", opts)
	}
	opts.Seed = 5
	toA := must(AlignWeights(spec, pa, pc, &opts))
	cAligned := must(AlignApply(spec, pc, toA.Perms))
	defer cAligned.Close()
	raw, after := must(pa.Distance(ctx, pc)).Total, must(pa.Distance(ctx, cAligned)).Total
	t.Logf("independent chain: distance to A %.6f raw, %.6f aligned", raw, after)
	if !(after < raw) {
		t.Fatalf("alignment did not bring C closer to A: %g -> %g", raw, after)
	}
	close1(t, must(cAligned.Norms(ctx)).Total, must(pc.Norms(ctx)).Total, 1e-6, "norm of C aligned")
	ca := readChain(t, cAligned)
	for r := 0; r < 20; r++ {
		in := g.dense(1, chainIn).v
		_, _, want := c.forward(in)
		_, _, got := ca.forward(in)
		for o := range want {
			close1(t, got[o], want[o], 1e-12, fmt.Sprintf("input %d output %d of C aligned", r, o))
		}
	}
}

var mlpSizes = []uint64{6, 10, 8, 3}

func TestAlignMLPAndLayerwiseCurve(t *testing.T) {
	ctx := cpu(t)
	a := must(MLPInit(mlpSizes, 1))
	defer a.Close()
	spec := must(InferPermSpec(a))
	defer spec.Close()
	if spec.GroupCount() != 2 || spec.Units() != 18 {
		t.Fatalf("MLP spec: %d groups, %d units", spec.GroupCount(), spec.Units())
	}

	// B = A permuted (reversed, rotated by 3) through the library; matching undoes it exactly.
	hidden := make([]uint64, 18)
	for i := 0; i < 10; i++ {
		hidden[i] = uint64(9 - i)
	}
	for i := 0; i < 8; i++ {
		hidden[10+i] = uint64((i + 3) % 8)
	}
	b := must(AlignApply(spec, a, hidden))
	defer b.Close()
	found := must(AlignWeights(spec, a, b, nil))
	checkInverse(t, found.Perms, hidden, 10, 8)
	back := must(AlignApply(spec, b, found.Perms))
	defer back.Close()
	if d := must(a.Distance(ctx, back)).Total; d != 0 {
		t.Fatalf("distance of A to B aligned is %g, want 0", d)
	}

	// The same function: the built-in MLP's loss on random data is A's for the permuted B.
	const rows = 40
	g := &rng{s: 7}
	x := f32s(g.dense(rows, 6))
	labels := make([]uint32, rows)
	for r := range labels {
		labels[r] = uint32(r % 3)
	}
	ev := must(NewMLPEvaluator(mlpSizes, x, labels))
	defer ev.Close()
	atA, atB := must(ev.Evaluate(a)), must(ev.Evaluate(b))
	close1(t, atB.Loss, atA.Loss, 1e-5, "loss of A permuted")

	// Layer-wise curve: all modules moving is the plain curve; the last one alone starts at A.
	other := must(MLPInit(mlpSizes, 2))
	defer other.Close()
	live := must(a.Clone())
	defer live.Close()
	lambdas := []float64{0, 0.4, 0.7, 1}
	plain := must(InterpolationCurve(ctx, ev, a, other, live, lambdas, -1))
	all := must(LayerwiseCurve(ctx, ev, a, other, live, lambdas, 0, 3))
	for k := range lambdas {
		if all[k] != plain[k] {
			t.Fatalf("lambda %g: layer-wise with every module %+v, plain curve %+v", lambdas[k], all[k], plain[k])
		}
	}
	last := must(LayerwiseCurve(ctx, ev, a, other, live, lambdas, 2, 1))
	atOther := must(ev.Evaluate(other))
	if last[0] != atA {
		t.Fatalf("the last module's curve starts at %+v, A is %+v", last[0], atA)
	}
	if last[3].Loss == atA.Loss || last[3].Loss == atOther.Loss {
		t.Fatalf("the last module's curve ends at %+v: A or B, not a hybrid", last[3])
	}
	barrier := must(Barrier(lambdas, last, MetricLoss, 0))
	if barrier.Start != atA.Loss || barrier.End != last[3].Loss || barrier.Value < 0 {
		t.Fatalf("barrier %+v of the curve %+v", barrier, last)
	}
}

func TestAlignErrors(t *testing.T) {
	ctx := cpu(t)
	a := must(MLPInit(mlpSizes, 1))
	defer a.Close()
	b := must(MLPInit(mlpSizes, 2))
	defer b.Close()
	wider := must(MLPInit([]uint64{6, 12, 8, 3}, 1))
	defer wider.Close()
	spec := must(InferPermSpec(a))
	defer spec.Close()
	closed := must(InferPermSpec(a))
	noErr(t, closed.Close())
	noErr(t, closed.Close()) // twice is a no-op
	var nilSpec *PermSpec
	if nilSpec.Units() != 0 || closed.GroupCount() != 0 {
		t.Fatal("a nil or closed spec reports units or groups")
	}
	closedSet := must(a.Clone())
	closedSet.Close()
	closedCtx := must(NewCPUContext())
	closedCtx.Close()
	lone := must(WrapParams(ctx, []Tensor{must(NewTensor("fc1.weight", []float32{1, 2, 3, 4}, 4))}))
	defer lone.Close()
	live := must(a.Clone())
	defer live.Close()
	ev := must(NewMLPEvaluator(mlpSizes, make([]float32, 6*4), []uint32{0, 1, 2, 0}))
	defer ev.Close()
	closedEv := must(NewMLPEvaluator(mlpSizes, make([]float32, 6), []uint32{0}))
	closedEv.Close()

	identity := make([]uint64, spec.Units())
	for i := range identity {
		identity[i] = uint64(i % 10)
		if i >= 10 {
			identity[i] = uint64(i - 10)
		}
	}
	repeated := append([]uint64(nil), identity...)
	repeated[1] = repeated[0]
	huge := append([]uint64(nil), identity...)
	huge[1] = math.MaxUint64
	badPasses := DefaultAlignOptions()
	badPasses.MaxPasses = 0

	const rows = 8
	g := &rng{s: 3}
	act := func(cols int) Matrix { return must(NewMatrix(f32s(g.dense(rows, cols)), rows, cols)) }
	a1, a2, b1, b2 := act(10), act(8), act(10), act(8)
	oneRow := func(m Matrix) Matrix { return must(m.Rows(0, 1)) }
	nan := f32s(g.dense(rows, 8))
	nan[5] = float32(math.NaN())
	nanB2 := must(NewMatrix(nan, rows, 8))
	lambdas := []float64{0, 0.5, 1}
	// Sets of the MLP's shapes in CUDA device memory (addresses only: nothing reads them here).
	deviceSet := func(base uintptr) *Params {
		var tensors []Tensor
		for l := 1; l < len(mlpSizes); l++ {
			in, out := mlpSizes[l-1], mlpSizes[l]
			tensors = append(tensors,
				must(NewDeviceTensor(fmt.Sprintf("fc%d.weight", l), base, F32, 0, out, in)),
				must(NewDeviceTensor(fmt.Sprintf("fc%d.bias", l), base+uintptr(4*out*in), F32, 0, out)))
			base += uintptr(4 * (out*in + out))
		}
		p := must(WrapParams(ctx, tensors))
		t.Cleanup(func() { p.Close() })
		return p
	}
	aDev, bDev := deviceSet(0x100000), deviceSet(0x200000)

	err := func(_ any, err error) error { return err }
	cases := []struct {
		name    string
		err     error
		want    *Error
		message string // a part of the library's message, when it names something
	}{
		{"infer from nil", err(InferPermSpec(nil)), ErrNullArgument, ""},
		{"infer from a closed set", err(InferPermSpec(closedSet)), ErrNullArgument, ""},
		{"infer from no dense chain", err(InferPermSpec(lone)), ErrInvalidArgument, ""},
		{"malformed JSON", err(PermSpecFromJSON(`{"groups": [`)), ErrFormat, ""},
		{"unknown JSON field", err(PermSpecFromJSON(`{"groups": [], "extra": 1}`)), ErrFormat, ""},
		{"group of size 0", err(PermSpecFromJSON(`{"groups": [{"name": "h", "size": 0, "axes": []}]}`)), ErrInvalidArgument, ""},
		{"partition not dividing", err(PermSpecFromJSON(`{"groups": [{"name": "h", "size": 6, "partition": [4], "axes": []}]}`)),
			ErrInvalidArgument, ""},
		{"group past the last", err(spec.GroupSize(2)), ErrNotFound, ""},
		{"negative group", err(spec.GroupSize(-1)), ErrNotFound, ""},
		{"group size of nil", err(nilSpec.GroupSize(0)), ErrNullArgument, ""},
		{"check nil set", spec.Check(nil), ErrNullArgument, ""},
		{"check with nil spec", nilSpec.Check(a), ErrNullArgument, ""},
		{"check a set of other widths", spec.Check(wider), ErrShapeMismatch, `"fc1.weight"`},
		{"check a set without the tensors", spec.Check(lone), ErrShapeMismatch, `"fc1.weight"`},
		{"weights with nil spec", err(AlignWeights(nil, a, b, nil)), ErrNullArgument, ""},
		{"weights with closed spec", err(AlignWeights(closed, a, b, nil)), ErrNullArgument, ""},
		{"weights with nil a", err(AlignWeights(spec, nil, b, nil)), ErrNullArgument, ""},
		{"weights with closed b", err(AlignWeights(spec, a, closedSet, nil)), ErrNullArgument, ""},
		{"weights with mismatched b", err(AlignWeights(spec, a, wider, nil)), ErrShapeMismatch, "fc1"},
		{"weights with 0 passes", err(AlignWeights(spec, a, b, &badPasses)), ErrInvalidArgument, "max_passes"},
		{"apply with nil spec", err(AlignApply(nil, b, identity)), ErrNullArgument, ""},
		{"apply to nil", err(AlignApply(spec, nil, identity)), ErrNullArgument, ""},
		{"apply too short", err(AlignApply(spec, b, identity[:17])), ErrShapeMismatch, "tl_perm_spec_units"},
		{"apply without perms", err(AlignApply(spec, b, nil)), ErrShapeMismatch, "tl_perm_spec_units"},
		{"apply a repeated unit", err(AlignApply(spec, b, repeated)), ErrInvalidArgument, `"fc1"`},
		{"apply a unit past 2^64", err(AlignApply(spec, b, huge)), ErrInvalidArgument, ""},
		{"apply to a mismatched set", err(AlignApply(spec, wider, identity)), ErrShapeMismatch, ""},
		{"activations with nil ctx", err(AlignActivations(nil, spec, []Matrix{a1, a2}, []Matrix{b1, b2})), ErrNullArgument, ""},
		{"activations with closed ctx", err(AlignActivations(closedCtx, spec, []Matrix{a1, a2}, []Matrix{b1, b2})), ErrNullArgument, ""},
		{"activations with nil spec", err(AlignActivations(ctx, nil, []Matrix{a1, a2}, []Matrix{b1, b2})), ErrNullArgument, ""},
		{"activations of 2 and 1 groups", err(AlignActivations(ctx, spec, []Matrix{a1, a2}, []Matrix{b1})), ErrShapeMismatch, ""},
		{"activations of 1 group", err(AlignActivations(ctx, spec, []Matrix{a1}, []Matrix{b1})), ErrShapeMismatch, ""},
		{"activations of no group", err(AlignActivations(ctx, spec, nil, nil)), ErrInvalidArgument, ""},
		{"activations of swapped widths", err(AlignActivations(ctx, spec, []Matrix{a1, a2}, []Matrix{b2, b1})), ErrShapeMismatch, `"fc1"`},
		{"activations of 1 row", err(AlignActivations(ctx, spec, []Matrix{oneRow(a1), oneRow(a2)}, []Matrix{oneRow(b1), oneRow(b2)})),
			ErrDegenerateInput, ""},
		{"activations of different rows", err(AlignActivations(ctx, spec, []Matrix{a1, a2}, []Matrix{b1, must(b2.Rows(0, rows-1))})),
			ErrShapeMismatch, ""},
		{"activations with NaN", err(AlignActivations(ctx, spec, []Matrix{a1, a2}, []Matrix{b1, nanB2})), ErrNonFinite, `"fc2"`},
		{"layer-wise past the last module", err(LayerwiseCurve(ctx, ev, a, b, live, lambdas, 2, 2)), ErrInvalidArgument, ""},
		{"layer-wise of no module", err(LayerwiseCurve(ctx, ev, a, b, live, lambdas, 0, 0)), ErrInvalidArgument, ""},
		{"layer-wise from a negative module", err(LayerwiseCurve(ctx, ev, a, b, live, lambdas, -1, 2)), ErrInvalidArgument, ""},
		{"layer-wise of a negative count", err(LayerwiseCurve(ctx, ev, a, b, live, lambdas, 0, -1)), ErrInvalidArgument, ""},
		{"layer-wise into a", err(LayerwiseCurve(ctx, ev, a, b, a, lambdas, 0, 1)), ErrInvalidArgument, "live is a"},
		{"layer-wise without lambdas", err(LayerwiseCurve(ctx, ev, a, b, live, nil, 0, 1)), ErrInvalidArgument, ""},
		{"layer-wise with NaN lambda", err(LayerwiseCurve(ctx, ev, a, b, live, []float64{0, math.NaN()}, 0, 1)), ErrInvalidArgument, ""},
		{"layer-wise with nil ctx", err(LayerwiseCurve(nil, ev, a, b, live, lambdas, 0, 1)), ErrNullArgument, ""},
		{"layer-wise with nil evaluator", err(LayerwiseCurve(ctx, nil, a, b, live, lambdas, 0, 1)), ErrNullArgument, ""},
		{"layer-wise with closed evaluator", err(LayerwiseCurve(ctx, closedEv, a, b, live, lambdas, 0, 1)), ErrNullArgument, ""},
		{"layer-wise with nil a", err(LayerwiseCurve(ctx, ev, nil, b, live, lambdas, 0, 1)), ErrNullArgument, ""},
		{"layer-wise with nil b", err(LayerwiseCurve(ctx, ev, a, nil, live, lambdas, 0, 1)), ErrNullArgument, ""},
		{"layer-wise with nil live", err(LayerwiseCurve(ctx, ev, a, b, nil, lambdas, 0, 1)), ErrNullArgument, ""},
		{"layer-wise of mismatched sets", err(LayerwiseCurve(ctx, ev, a, wider, live, lambdas, 0, 1)), ErrShapeMismatch, ""},
		// Held modules are copied in host memory: refused up front, naming the tensor.
		{"layer-wise holding device tensors", err(LayerwiseCurve(ctx, ev, aDev, bDev, live, lambdas, 0, 1)),
			ErrDeviceUnavailable, `"fc2.weight" of a lives on CUDA device 0`},
		// Every module moving holds nothing: the interpolation's own placement rules apply.
		{"layer-wise moving every device module", err(LayerwiseCurve(ctx, ev, aDev, bDev, live, lambdas, 0, 3)),
			ErrInvalidArgument, "one place"},
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
	// A failed call leaves the spec usable.
	if _, err := AlignWeights(spec, a, b, nil); err != nil {
		t.Fatal(err)
	}
}
