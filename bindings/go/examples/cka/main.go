// Linear CKA from Go: two layers' activations of the same 6 samples, compared in one call and
// streamed in two batches through an accumulator (which gives the same value).
package main

import (
	"errors"
	"fmt"
	"log"

	"transferlens"
)

func main() {
	// Activations of 6 samples: 3 features in layer A, 2 in layer B (row-major).
	a := []float32{0.1, 1.2, -0.3, 0.8, -0.5, 0.9, -1.1, 0.4, 0.2,
		0.6, 0.3, -0.7, -0.2, -0.9, 1.4, 0.5, 0.7, 0.1}
	b := []float32{0.3, 1.0, 0.9, -0.2, -1.0, 0.6, 0.4, 0.5, -0.1, -1.2, 0.6, 0.8}

	ctx, err := transferlens.NewContext(transferlens.BackendAuto, 0)
	if err != nil {
		log.Fatal(err)
	}
	defer ctx.Close()

	x, err := transferlens.NewMatrix(a, 6, 3) // views the slice: no copy
	if err != nil {
		log.Fatal(err)
	}
	y, err := transferlens.NewMatrix(b, 6, 2)
	if err != nil {
		log.Fatal(err)
	}
	cka, err := ctx.CKALinear(x, y, transferlens.Debiased)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("debiased linear CKA = %.10f\n", cka)

	// The same value, streamed: samples 0-3, then 4-5.
	acc, err := transferlens.NewCKAAccumulator(ctx, 1, 1, transferlens.Debiased)
	if err != nil {
		log.Fatal(err)
	}
	defer acc.Close()
	for _, batch := range [][2]int{{0, 4}, {4, 2}} {
		bx, _ := x.Rows(batch[0], batch[1])
		by, _ := y.Rows(batch[0], batch[1])
		if err := acc.Update([]transferlens.Matrix{bx}, []transferlens.Matrix{by}); err != nil {
			log.Fatal(err)
		}
	}
	streamed, err := acc.Result()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("streamed in 2 batches = %.10f\n", streamed[0][0])

	// Failures are *transferlens.Error values: test them with errors.Is.
	firstThree, _ := y.Rows(0, 3)
	_, err = ctx.CKALinear(x, firstThree, transferlens.Debiased)
	if errors.Is(err, transferlens.ErrShapeMismatch) {
		fmt.Println("rows differ:", err)
	}
}
