package transferlens

import (
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
)

const cnnSpec = `{"input": [1, 6, 6], "classes": 2, "layers": [
	{"type": "conv", "name": "conv1", "out": 4, "kernel": 3, "padding": 1},
	{"type": "groupnorm", "name": "gn1", "groups": 2}, {"type": "relu"},
	{"type": "block", "name": "layer1", "out": 4, "groups": 2},
	{"type": "global_avgpool"}, {"type": "dense", "name": "fc", "out": 2}]}`

// stripes gives n 6 x 6 images: horizontal stripes (class 0) or a checkerboard (class 1), noisy.
func stripes(n int) ([]float32, []uint32) {
	x := make([]float32, n*36)
	y := make([]uint32, n)
	state := uint64(3)
	for r := 0; r < n; r++ {
		y[r] = uint32(r % 2)
		for i := 0; i < 6; i++ {
			for j := 0; j < 6; j++ {
				state = state*6364136223846793005 + 1442695040888963407
				noise := float64(state>>40)/float64(1<<24) - 0.5
				v := -1.0
				if (y[r] == 0 && i%2 == 1) || (y[r] == 1 && (i+j)%2 == 1) {
					v = 1.0
				}
				x[r*36+i*6+j] = float32(v + 0.5*noise)
			}
		}
	}
	return x, y
}

func TestCNNTrainEvaluateAnalyse(t *testing.T) {
	cnn, err := NewCNN(cnnSpec)
	if err != nil {
		t.Fatal(err)
	}
	defer cnn.Close()
	if c, h, w, err := cnn.InputShape(); err != nil || c != 1 || h != 6 || w != 6 || cnn.Classes() != 2 {
		t.Fatalf("shape %d %d %d classes %d err %v", c, h, w, cnn.Classes(), err)
	}
	if got := cnn.ModuleNames(); !reflect.DeepEqual(got, []string{"conv1", "layer1", "fc"}) {
		t.Fatalf("modules %v", got)
	}
	if w, err := cnn.ModuleWidth(1); err != nil || w != 4*36 {
		t.Fatalf("width %d %v", w, err)
	}
	x, y := stripes(32)
	init, err := cnn.Init(1)
	if err != nil {
		t.Fatal(err)
	}
	defer init.Close()
	trained, err := init.Clone()
	if err != nil {
		t.Fatal(err)
	}
	defer trained.Close()
	opts := DefaultTrainOptions()
	if opts.Epochs != 10 || opts.Batch != 32 || opts.Schedule != LRConstant {
		t.Fatalf("defaults %+v", opts)
	}
	opts.Epochs, opts.Batch, opts.Schedule = 8, 8, LRCosine
	losses, err := cnn.Train(trained, x, y, &opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(losses) != 8 || !(losses[7] < 0.5*losses[0]) {
		t.Fatalf("losses %v", losses)
	}

	ev, err := cnn.Evaluator(x, y)
	if err != nil {
		t.Fatal(err)
	}
	defer ev.Close()
	before, err := ev.Evaluate(init)
	if err != nil {
		t.Fatal(err)
	}
	after, err := ev.Evaluate(trained)
	if err != nil || !(after.Loss < before.Loss) || after.Error > before.Error {
		t.Fatalf("before %+v after %+v err %v", before, after, err)
	}
	ctx, err := NewCPUContext()
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.Close()
	live, err := init.Clone()
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	curve, err := InterpolationCurve(ctx, ev, init, trained, live, []float64{0, 0.5, 1}, -1)
	if err != nil || curve[0] != before || curve[2] != after {
		t.Fatalf("curve %v err %v", curve, err)
	}
	co := DefaultCriticalityOptions()
	co.Metric, co.Eps, co.Samples, co.Repeats = MetricLoss, 0.1, 2, 1
	c, err := ModuleCriticality(ctx, ev, Path{Init: init, Final: trained}, live, 1, &co)
	if err != nil || c.Value < 0 || c.Numel == 0 {
		t.Fatalf("criticality %+v err %v", c, err)
	}

	logits, err := cnn.Activations(trained, x, 2)
	if err != nil || len(logits) != 64 {
		t.Fatalf("logits %d err %v", len(logits), err)
	}
	wrong := 0
	for r := 0; r < 32; r++ {
		if (logits[2*r+1] > logits[2*r]) != (y[r] == 1) {
			wrong++
		}
	}
	if math.Abs(after.Error-float64(wrong)/32) > 1e-12 {
		t.Fatalf("error %v, argmax of the logits gives %v", after.Error, float64(wrong)/32)
	}
	acts, err := cnn.Activations(trained, x, 0)
	if err != nil || len(acts) != 32*4*36 {
		t.Fatalf("activations %d err %v", len(acts), err)
	}
	for _, v := range acts {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			t.Fatal("a non-finite activation")
		}
	}

	sizes := []uint64{36, 8, 2}
	mlp, err := MLPInit(sizes, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer mlp.Close()
	mlpLosses, err := MLPTrain(sizes, mlp, x, y, &opts)
	if err != nil || len(mlpLosses) != 8 || !(mlpLosses[7] < mlpLosses[0]) {
		t.Fatalf("mlp losses %v err %v", mlpLosses, err)
	}
}

func TestCNNErrors(t *testing.T) {
	if _, err := NewCNN(`{"input": [1, 6`); !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "JSON") {
		t.Fatalf("bad JSON: %v", err)
	}
	if _, err := NewCNN(`{"input": [1, 6, 6], "classes": 2, "layers": [{"type": "conv", "name": "c", "kernel": 3}]}`); !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "out") {
		t.Fatalf("missing field: %v", err)
	}
	cnn, err := NewCNN(cnnSpec)
	if err != nil {
		t.Fatal(err)
	}
	x, y := stripes(4)
	bad := append([]uint32(nil), y...)
	bad[1] = 2
	if _, err := cnn.Evaluator(x, bad); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("label >= classes: %v", err)
	}
	if _, err := cnn.Evaluator(x[:35], y); !errors.Is(err, ErrShapeMismatch) {
		t.Fatalf("partial image: %v", err)
	}
	nan := append([]float32(nil), x...)
	nan[3] = float32(math.NaN())
	if _, err := cnn.Evaluator(nan, y); !errors.Is(err, ErrNonFinite) {
		t.Fatalf("NaN pixel: %v", err)
	}
	mlp, err := MLPInit([]uint64{36, 4, 2}, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer mlp.Close()
	if _, err := cnn.Train(mlp, x, y, nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a set without the CNN's tensors: %v", err)
	}
	p, err := cnn.Init(1)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	opts := DefaultTrainOptions()
	opts.Momentum = 1
	if _, err := cnn.Train(p, x, y, &opts); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("momentum 1: %v", err)
	}
	if _, err := cnn.ModuleWidth(3); !errors.Is(err, ErrNotFound) {
		t.Fatalf("module 3: %v", err)
	}
	cnn.Close()
	if _, err := cnn.Init(1); !errors.Is(err, ErrNullArgument) {
		t.Fatalf("closed CNN: %v", err)
	}
}
