package transferlens

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// model: conv1.weight F32 [2, 3], layer1.0.weight F64 [4], layer1.1.bias F32 [2], fc.bias F64
// [3], and an I64 counter the library carries through (not a weight).
type model struct {
	conv []float32
	l10  []float64
	l11  []float32
	fc   []float64
}

func randomModel(g *rng) model {
	m := model{make([]float32, 6), make([]float64, 4), make([]float32, 2), make([]float64, 3)}
	for i := range m.conv {
		m.conv[i] = float32(g.normal())
	}
	for i := range m.l10 {
		m.l10[i] = g.normal()
	}
	for i := range m.l11 {
		m.l11[i] = float32(g.normal())
	}
	for i := range m.fc {
		m.fc[i] = g.normal()
	}
	return m
}

// modules returns the model's values in f64 per module: conv1, layer1, fc.
func (m model) modules() [][]float64 {
	conv := make([]float64, len(m.conv))
	for i, v := range m.conv {
		conv[i] = float64(v)
	}
	l1 := append([]float64(nil), m.l10...)
	for _, v := range m.l11 {
		l1 = append(l1, float64(v))
	}
	return [][]float64{conv, l1, append([]float64(nil), m.fc...)}
}

// writeSafetensors writes the model: 8-byte little-endian header length, JSON header, data.
func writeSafetensors(t *testing.T, path string, m model) {
	t.Helper()
	var data []byte
	header := map[string]any{"__metadata__": map[string]string{"format": "pt"}}
	add := func(name, dtype string, shape []int, raw any) {
		start := len(data)
		var buf bytes.Buffer
		if err := binary.Write(&buf, binary.LittleEndian, raw); err != nil {
			t.Fatal(err)
		}
		data = append(data, buf.Bytes()...)
		header[name] = map[string]any{"dtype": dtype, "shape": shape, "data_offsets": []int{start, len(data)}}
	}
	add("conv1.weight", "F32", []int{2, 3}, m.conv)
	add("layer1.0.weight", "F64", []int{4}, m.l10)
	add("bn.num_batches_tracked", "I64", []int{}, []int64{42})
	add("layer1.1.bias", "F32", []int{2}, m.l11)
	add("fc.bias", "F64", []int{3}, m.fc)
	js, err := json.Marshal(header)
	if err != nil {
		t.Fatal(err)
	}
	file := binary.LittleEndian.AppendUint64(nil, uint64(len(js)))
	file = append(append(file, js...), data...)
	if err := os.WriteFile(path, file, 0o644); err != nil {
		t.Fatal(err)
	}
}

// refSums returns per module sum (a-b)^2, a^2, b^2, a.b in f64.
func refSums(a, b model) (dd, aa, bb, ab []float64) {
	ra, rb := a.modules(), b.modules()
	dd, aa, bb, ab = make([]float64, 3), make([]float64, 3), make([]float64, 3), make([]float64, 3)
	for k := range ra {
		for i := range ra[k] {
			x, y := ra[k][i], rb[k][i]
			dd[k] += (x - y) * (x - y)
			aa[k] += x * x
			bb[k] += y * y
			ab[k] += x * y
		}
	}
	return
}

func sum(v []float64) float64 {
	s := 0.0
	for _, x := range v {
		s += x
	}
	return s
}

// loadPair writes two random models and loads them.
func loadPair(t *testing.T, ctx *Context) (model, model, *Params, *Params, string) {
	t.Helper()
	g := &rng{s: 99}
	ma, mb := randomModel(g), randomModel(g)
	dir := t.TempDir()
	writeSafetensors(t, filepath.Join(dir, "a.safetensors"), ma)
	writeSafetensors(t, filepath.Join(dir, "b.safetensors"), mb)
	a := must(LoadParams(ctx, filepath.Join(dir, "a.safetensors")))
	b := must(LoadParams(ctx, filepath.Join(dir, "b.safetensors")))
	t.Cleanup(func() { a.Close(); b.Close() })
	return ma, mb, a, b, dir
}

func TestParamsFigures(t *testing.T) {
	ctx := cpu(t)
	ma, mb, a, b, _ := loadPair(t, ctx)
	if a.TensorCount() != 5 || a.ModuleCount() != 3 {
		t.Fatalf("tensors %d, modules %d", a.TensorCount(), a.ModuleCount())
	}
	names := must(a.ModuleNames())
	if !reflect.DeepEqual(names, []string{"conv1", "layer1", "fc"}) {
		t.Fatalf("module names %q", names)
	}
	if i := must(a.FindModule("fc")); i != 2 {
		t.Fatalf("FindModule(fc) = %d", i)
	}
	dd, aa, bb, ab := refSums(ma, mb)
	d := must(a.Distance(ctx, b))
	n := must(a.Norms(ctx))
	c := must(a.Compare(ctx, b))
	for k := 0; k < 3; k++ {
		closeTo(t, "distance", d.PerModule[k], math.Sqrt(dd[k]), 1e-12)
		closeTo(t, "norm", n.PerModule[k], math.Sqrt(aa[k]), 1e-12)
		closeTo(t, "compare distance", c.PerModule[k].Distance, math.Sqrt(dd[k]), 1e-12)
		closeTo(t, "compare norm b", c.PerModule[k].NormB, math.Sqrt(bb[k]), 1e-12)
		closeTo(t, "relative", c.PerModule[k].Relative, math.Sqrt(dd[k]/aa[k]), 1e-12)
		closeTo(t, "cosine", c.PerModule[k].Cosine, ab[k]/math.Sqrt(aa[k]*bb[k]), 1e-12)
	}
	closeTo(t, "total distance", d.Total, math.Sqrt(sum(dd)), 1e-12)
	closeTo(t, "total norm", n.Total, math.Sqrt(sum(aa)), 1e-12)
	closeTo(t, "compare total", c.Total.Distance, math.Sqrt(sum(dd)), 1e-12)
	if c.PerModule[1].Numel != 6 || c.Total.Numel != 15 {
		t.Fatalf("numel %d, total %d", c.PerModule[1].Numel, c.Total.Numel)
	}
}

func TestParamsInterpolateRewindSave(t *testing.T) {
	ctx := cpu(t)
	ma, mb, a, b, dir := loadPair(t, ctx)
	out := must(a.Clone())
	defer out.Close()
	for _, lambda := range []float64{-0.5, 0, 0.3, 1, 2} {
		noErr(t, out.Interpolate(ctx, a, b, lambda))
		conv := must(out.TensorF32("conv1.weight"))
		fc := must(out.TensorF64("fc.bias"))
		for i := range conv {
			closeTo(t, "conv", float64(conv[i]), (1-lambda)*float64(ma.conv[i])+lambda*float64(mb.conv[i]), 1e-6)
		}
		for i := range fc {
			closeTo(t, "fc", fc[i], (1-lambda)*ma.fc[i]+lambda*mb.fc[i], 1e-14)
		}
		if lambda == 1 && !reflect.DeepEqual(conv, mb.conv) || lambda == 0 && !reflect.DeepEqual(fc, ma.fc) {
			t.Fatalf("lambda %g: the endpoint is not bit for bit", lambda)
		}
	}
	noErr(t, out.InterpolateModule(ctx, a, b, 0.5, must(a.FindModule("layer1"))))
	if !reflect.DeepEqual(must(out.TensorF32("conv1.weight")), mb.conv) {
		t.Fatal("InterpolateModule: conv1 is not at b")
	}
	l10 := must(out.TensorF64("layer1.0.weight"))
	for i := range l10 {
		closeTo(t, "layer1 halfway", l10[i], 0.5*ma.l10[i]+0.5*mb.l10[i], 1e-14)
	}
	noErr(t, out.Rewind(ctx, a, b, 2, 0))
	if !reflect.DeepEqual(must(out.TensorF64("fc.bias")), ma.fc) ||
		!reflect.DeepEqual(must(out.TensorF64("layer1.0.weight")), mb.l10) {
		t.Fatal("Rewind(fc, 0): fc not at a or layer1 not at b")
	}

	noErr(t, out.Interpolate(ctx, a, b, 0.3))
	path := filepath.Join(dir, "mid.safetensors")
	noErr(t, out.Save(path))
	mid := must(LoadParams(ctx, path))
	defer mid.Close()
	if d := must(mid.Distance(ctx, out)); d.Total != 0 || mid.TensorCount() != 5 {
		t.Fatalf("saved and loaded: distance %g, %d tensors", d.Total, mid.TensorCount())
	}
}

// LoadParamsMapped reads the values LoadParams reads, and a write into the mapped set (as the
// output of an interpolation) never reaches the file. LoadParams takes a snapshot: rewriting the
// file in place afterwards (once the mapped set is closed, as its contract asks) leaves it as it
// was.
func TestParamsLoadMapped(t *testing.T) {
	ctx := cpu(t)
	ma, mb, a, b, dir := loadPair(t, ctx)
	path := filepath.Join(dir, "a.safetensors")
	before := must(os.ReadFile(path))
	mapped := must(LoadParamsMapped(ctx, path))
	defer mapped.Close()
	if mapped.TensorCount() != 5 || mapped.ModuleCount() != 3 {
		t.Fatalf("mapped: %d tensors, %d modules", mapped.TensorCount(), mapped.ModuleCount())
	}
	if !reflect.DeepEqual(must(mapped.TensorF32("conv1.weight")), ma.conv) ||
		!reflect.DeepEqual(must(mapped.TensorF64("fc.bias")), ma.fc) {
		t.Fatal("the mapped set does not hold the file's values")
	}
	if d := must(mapped.Distance(ctx, a)); d.Total != 0 {
		t.Fatalf("mapped and copied sets differ: distance %g", d.Total)
	}
	// Where the process's mappings can be listed (Linux), the file is among them while the set
	// lives, and a file loaded by LoadParams is not.
	if maps := procMaps(); maps != nil && (!maps[path] || maps[filepath.Join(dir, "b.safetensors")]) {
		t.Fatal("the file of LoadParamsMapped is not mapped, or that of LoadParams is")
	}
	noErr(t, mapped.Interpolate(ctx, a, b, 1))
	if !reflect.DeepEqual(must(mapped.TensorF32("conv1.weight")), mb.conv) {
		t.Fatal("the mapped set did not take the interpolation")
	}
	if !bytes.Equal(must(os.ReadFile(path)), before) {
		t.Fatal("a write into the mapped set reached the file")
	}
	noErr(t, mapped.Close())
	if procMaps()[path] {
		t.Fatal("Close left the file mapped")
	}
	writeSafetensors(t, path, mb)
	if !reflect.DeepEqual(must(a.TensorF32("conv1.weight")), ma.conv) {
		t.Fatal("rewriting the file changed a set loaded by LoadParams")
	}
}

// LoadCheckpoint reads a folder holding model.safetensors and a sharded checkpoint (by folder and
// by index) to the same set as the file, and refuses an index naming a shard that is not there.
func TestLoadCheckpoint(t *testing.T) {
	ctx := cpu(t)
	ma, _, a, _, dir := loadPair(t, ctx)
	folder := filepath.Join(dir, "folder")
	noErr(t, os.Mkdir(folder, 0o700))
	writeSafetensors(t, filepath.Join(folder, "model.safetensors"), ma)
	sharded := filepath.Join(dir, "sharded")
	noErr(t, os.Mkdir(sharded, 0o700))
	writeSafetensors(t, filepath.Join(sharded, "only.safetensors"), ma)
	index := filepath.Join(sharded, "model.safetensors.index.json")
	names := []string{"conv1.weight", "layer1.0.weight", "bn.num_batches_tracked", "layer1.1.bias", "fc.bias"}
	writeIndex := func(shard string) {
		entries := make([]string, len(names))
		for i, n := range names {
			entries[i] = fmt.Sprintf("%q:%q", n, shard)
		}
		noErr(t, os.WriteFile(index, []byte(`{"weight_map":{`+strings.Join(entries, ",")+`}}`), 0o600))
	}
	writeIndex("only.safetensors")
	for _, where := range []string{folder, sharded, index} {
		p := must(LoadCheckpoint(ctx, where))
		if p.TensorCount() != 5 {
			t.Fatalf("%s: %d tensors", where, p.TensorCount())
		}
		if d := must(p.Distance(ctx, a)); d.Total != 0 {
			t.Fatalf("%s: distance %g from the file", where, d.Total)
		}
		noErr(t, p.Close())
	}
	writeIndex("other.safetensors")
	for _, where := range []string{sharded, filepath.Join(dir, "missing")} {
		var e *Error
		if _, err := LoadCheckpoint(ctx, where); !errors.As(err, &e) || e.Status != StatusIO {
			t.Fatalf("%s: want an IO error, got %v", where, err)
		}
	}
}

// procMaps returns the files this process maps (from /proc/self/maps), or nil where that listing
// does not exist (not Linux).
func procMaps() map[string]bool {
	listing, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return nil
	}
	files := map[string]bool{}
	for _, line := range strings.Split(string(listing), "\n") {
		if fields := strings.Fields(line); len(fields) >= 6 {
			files[fields[5]] = true
		}
	}
	return files
}

func TestParamsWrap(t *testing.T) {
	ctx := cpu(t)
	ma, mb, a, b, _ := loadPair(t, ctx)
	live := model{make([]float32, 6), make([]float64, 4), make([]float32, 2), make([]float64, 3)}
	w := must(WrapParams(ctx, []Tensor{
		must(NewTensor("conv1.weight", live.conv, 2, 3)),
		must(NewTensor("layer1.0.weight", live.l10, 4)),
		must(NewTensor("layer1.1.bias", live.l11, 2)),
		must(NewTensor("fc.bias", live.fc, 3)),
	}))
	defer w.Close()
	if w.ModuleCount() != 3 || w.TensorCount() != 4 {
		t.Fatalf("wrapped: %d modules, %d tensors", w.ModuleCount(), w.TensorCount())
	}
	// The library writes into the slices...
	noErr(t, w.Interpolate(ctx, a, b, 1))
	if !reflect.DeepEqual(live, mb) {
		t.Fatal("interpolate(1) into a wrapped set did not write b into the slices")
	}
	noErr(t, w.Interpolate(ctx, a, b, 0.25))
	for i := range live.fc {
		closeTo(t, "wrapped fc", live.fc[i], 0.75*ma.fc[i]+0.25*mb.fc[i], 1e-14)
	}
	dd, _, _, _ := refSums(ma, mb)
	closeTo(t, "wrapped distance", must(w.Distance(ctx, a)).Total, 0.25*math.Sqrt(sum(dd)), 1e-6)
	// ...and reads what Go writes into them.
	copy(live.conv, ma.conv)
	closeTo(t, "after a Go write", must(w.Distance(ctx, a)).PerModule[0], 0, 1e-15)
	// 16-bit tensors.
	bits := []uint16{0x3f80, 0x4000}
	w16 := must(WrapParams(ctx, []Tensor{must(NewTensor16("h.weight", bits, BF16, 2))}))
	defer w16.Close()
	got, dt, err := w16.Tensor16("h.weight")
	noErr(t, err)
	if dt != BF16 || !reflect.DeepEqual(got, bits) {
		t.Fatalf("Tensor16: %v %v", dt, got)
	}
	closeTo(t, "bf16 norm", must(w16.Norms(ctx)).Total, math.Sqrt(5), 1e-12)
	// Device memory: described here, computed on with a CUDA context only. The address is never
	// touched on a CPU context, so a made-up one serves.
	if _, err := NewDeviceTensor("d.weight", 0x1000, F32, -1, 2); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("negative device: %v", err)
	}
	if _, err := NewDeviceTensor("d.weight", 0, F32, 0, 2); !errors.Is(err, ErrNullArgument) {
		t.Fatalf("null device address: %v", err)
	}
	wd := must(WrapParams(ctx, []Tensor{must(NewDeviceTensor("d.weight", 0x1000, F32, 0, 2))}))
	defer wd.Close()
	if _, err := wd.Norms(ctx); !errors.Is(err, ErrDeviceUnavailable) {
		t.Fatalf("device set on a CPU context: %v", err)
	}
	empty := must(WrapParams(ctx, nil))
	defer empty.Close()
	if empty.ModuleCount() != 0 {
		t.Fatal("an empty wrapped set has modules")
	}
	if d := must(empty.Distance(ctx, empty)); len(d.PerModule) != 0 || d.Total != 0 {
		t.Fatalf("distance of empty sets: %+v", d)
	}
}

func TestParamsGrouping(t *testing.T) {
	ctx := cpu(t)
	_, _, a, b, _ := loadPair(t, ctx)
	total := must(a.Distance(ctx, b)).Total
	cases := []struct {
		name  string
		group func(p *Params) error
		want  []string
	}{
		{"depth 2", func(p *Params) error { return p.GroupByDepth(2) },
			[]string{"conv1.weight", "layer1.0", "layer1.1", "fc.bias"}},
		{"tensor", (*Params).GroupByTensor, []string{"conv1.weight", "layer1.0.weight", "layer1.1.bias", "fc.bias"}},
		{"prefixes", func(p *Params) error { return p.GroupByPrefixes([]string{"layer1", "layer1.1"}, UnmatchedOwnGroup) },
			[]string{"conv1.weight", "layer1", "layer1.1", "fc.bias"}},
		{"first", (*Params).GroupByFirst, []string{"conv1", "layer1", "fc"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			noErr(t, c.group(a))
			if got := must(a.ModuleNames()); !reflect.DeepEqual(got, c.want) {
				t.Fatalf("modules %q, want %q", got, c.want)
			}
			d := must(a.Distance(ctx, b))
			if len(d.PerModule) != len(c.want) {
				t.Fatalf("%d distances for %d modules", len(d.PerModule), len(c.want))
			}
			closeTo(t, "total", d.Total, total, 1e-12)
		})
	}
}

func TestParamsErrors(t *testing.T) {
	ctx := cpu(t)
	_, _, a, b, dir := loadPair(t, ctx)
	out := must(a.Clone())
	defer out.Close()
	conv := make([]float32, 6)
	onlyConv := must(WrapParams(ctx, []Tensor{must(NewTensor("conv1.weight", conv, 2, 3))}))
	defer onlyConv.Close()
	closed := must(a.Clone())
	closed.Close()
	noErr(t, closed.Close()) // twice is a no-op
	cases := []struct {
		name string
		err  error
		want *Error
	}{
		{"missing file", func() error { _, err := LoadParams(ctx, filepath.Join(dir, "missing")); return err }(), ErrIO},
		{"missing file, mapped", func() error { _, err := LoadParamsMapped(ctx, filepath.Join(dir, "missing")); return err }(), ErrIO},
		{"a folder, mapped", func() error { _, err := LoadParamsMapped(ctx, dir); return err }(), ErrIO},
		{"save into a missing folder", out.Save(filepath.Join(dir, "no", "x.safetensors")), ErrIO},
		{"module name out of range", func() error { _, err := a.ModuleName(3); return err }(), ErrNotFound},
		{"unknown module", func() error { _, err := a.FindModule("bn"); return err }(), ErrNotFound},
		{"carried-through tensor", func() error { _, err := a.TensorF64("bn.num_batches_tracked"); return err }(), ErrUnsupportedDType},
		{"wrong element type", func() error { _, err := a.TensorF32("fc.bias"); return err }(), ErrUnsupportedDType},
		{"mismatched sets", func() error { _, err := a.Distance(ctx, onlyConv); return err }(), ErrShapeMismatch},
		{"out is b", out.Interpolate(ctx, a, out, 0.5), ErrInvalidArgument},
		{"infinite lambda", out.Interpolate(ctx, a, b, math.Inf(1)), ErrInvalidArgument},
		{"module out of range", out.InterpolateModule(ctx, a, b, 0.5, 3), ErrNotFound},
		{"rewind out of range", out.Rewind(ctx, a, b, 7, 0.5), ErrNotFound},
		{"depth 0", out.GroupByDepth(0), ErrInvalidArgument},
		{"no prefixes", out.GroupByPrefixes(nil, UnmatchedOwnGroup), ErrInvalidArgument},
		{"unmatched error", out.GroupByPrefixes([]string{"layer1"}, UnmatchedError), ErrNotFound},
		{"shape and slice disagree", func() error { _, err := NewTensor("x", conv, 7); return err }(), ErrShapeMismatch},
		{"16 bits as F32", func() error { _, err := NewTensor16("x", []uint16{1}, F32, 1); return err }(), ErrInvalidArgument},
		{"overlapping tensors", func() error {
			_, err := WrapParams(ctx, []Tensor{must(NewTensor("x", conv, 6)), must(NewTensor("y", conv[:2], 2))})
			return err
		}(), ErrInvalidArgument},
		{"closed set", func() error { _, err := closed.Norms(ctx); return err }(), ErrNullArgument},
		{"closed set as out", closed.Interpolate(ctx, a, b, 0.5), ErrNullArgument},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var e *Error
			if !errors.Is(c.err, c.want) || !errors.As(c.err, &e) || e.Message == "" {
				t.Fatalf("got %v, want %v with a message", c.err, c.want)
			}
		})
	}
	if closed.ModuleCount() != 0 || out.ModuleCount() != 3 {
		t.Fatal("a failed regrouping changed the grouping, or a closed set has modules")
	}
}
