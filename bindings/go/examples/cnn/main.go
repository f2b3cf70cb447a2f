// The built-in CNN from Go: build it from a JSON spec, train it on 16 tiny images, watch the loss
// fall, and compare its first module's activations before and after training with CKA.
package main

import (
	"fmt"
	"log"

	"transferlens"
)

const spec = `{"input": [1, 4, 4], "classes": 2, "layers": [
	{"type": "conv", "name": "conv1", "out": 4, "kernel": 3, "padding": 1},
	{"type": "groupnorm", "name": "gn1", "groups": 2}, {"type": "relu"},
	{"type": "global_avgpool"}, {"type": "dense", "name": "fc", "out": 2}]}`

func main() {
	cnn, err := transferlens.NewCNN(spec)
	if err != nil {
		log.Fatal(err)
	}
	defer cnn.Close()

	// 16 images of 1 x 4 x 4 (NCHW): class 1 bright in the top half, class 0 in the bottom.
	const rows, pixels = 16, 16
	x := make([]float32, rows*pixels)
	labels := make([]uint32, rows)
	for r := 0; r < rows; r++ {
		labels[r] = uint32(r % 2)
		for p := 0; p < pixels; p++ {
			bright := float32(-1)
			if (p < 8) == (labels[r] == 1) {
				bright = 1
			}
			x[r*pixels+p] = bright + 0.25*float32((r*7+p*3)%5) - 0.5
		}
	}

	initial, err := cnn.Init(1)
	if err != nil {
		log.Fatal(err)
	}
	defer initial.Close()
	trained, err := initial.Clone()
	if err != nil {
		log.Fatal(err)
	}
	defer trained.Close()
	opts := transferlens.DefaultTrainOptions()
	opts.Epochs, opts.Batch, opts.LR, opts.Seed = 6, 4, 0.1, 3
	opts.Schedule = transferlens.LRCosine
	losses, err := cnn.Train(trained, x, labels, &opts)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("epoch losses:", losses)

	evaluator, err := cnn.Evaluator(x, labels)
	if err != nil {
		log.Fatal(err)
	}
	defer evaluator.Close()
	before, err := evaluator.Evaluate(initial)
	if err != nil {
		log.Fatal(err)
	}
	after, err := evaluator.Evaluate(trained)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("error:", before.Error, "->", after.Error)

	// Activations are rows x width (row-major): samples x features, as CKA takes them.
	width, err := cnn.ModuleWidth(0)
	if err != nil {
		log.Fatal(err)
	}
	var acts [2]transferlens.Matrix
	for i, p := range []*transferlens.Params{initial, trained} {
		a, err := cnn.Activations(p, x, 0)
		if err != nil {
			log.Fatal(err)
		}
		if acts[i], err = transferlens.NewMatrix(a, rows, int(width)); err != nil {
			log.Fatal(err)
		}
	}
	ctx, err := transferlens.NewCPUContext()
	if err != nil {
		log.Fatal(err)
	}
	defer ctx.Close()
	cka, err := ctx.CKALinear(acts[0], acts[1], transferlens.Debiased)
	if err != nil {
		log.Fatal(err)
	}
	name := cnn.ModuleNames()[0]
	fmt.Printf("CKA(%s initial, %s trained) = %.12g\n", name, name, cka)
}
