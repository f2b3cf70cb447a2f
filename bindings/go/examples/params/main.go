// Weight-space analysis from Go: how far fine-tuning moved each module of a pre-trained model,
// and what rewinding one module to its pre-trained value does. The two checkpoints are Go
// slices wrapped in place; in real code they may come from safetensors files (LoadParams).
package main

import (
	"fmt"
	"log"
	"math"

	"transferlens"
)

// checkpoint of a toy model: encoder.weight [3, 4], encoder.bias [3], head.weight [2, 3].
func checkpoint(step float64) [][]float32 {
	out := [][]float32{make([]float32, 12), make([]float32, 3), make([]float32, 6)}
	for t, tensor := range out {
		for i := range tensor {
			tensor[i] = float32(0.5*math.Sin(1+0.7*float64(i)+2*float64(t)) +
				step*0.05*float64(t+1)*math.Cos(0.3*float64(i)+float64(t)))
		}
	}
	return out
}

func wrap(ctx *transferlens.Context, c [][]float32) *transferlens.Params {
	var tensors []transferlens.Tensor
	for i, name := range []string{"encoder.weight", "encoder.bias", "head.weight"} {
		shape := [][]uint64{{3, 4}, {3}, {2, 3}}[i]
		t, err := transferlens.NewTensor(name, c[i], shape...)
		if err != nil {
			log.Fatal(err)
		}
		tensors = append(tensors, t)
	}
	p, err := transferlens.WrapParams(ctx, tensors)
	if err != nil {
		log.Fatal(err)
	}
	return p
}

func main() {
	ctx, err := transferlens.NewContext(transferlens.BackendAuto, 0)
	if err != nil {
		log.Fatal(err)
	}
	defer ctx.Close()
	scratch := checkpoint(0)
	pre, tuned, out := wrap(ctx, checkpoint(0)), wrap(ctx, checkpoint(1)), wrap(ctx, scratch)
	defer pre.Close()
	defer tuned.Close()
	defer out.Close() // the results land in scratch

	modules, err := pre.ModuleNames() // "encoder", "head"
	if err != nil {
		log.Fatal(err)
	}
	cmp, err := pre.Compare(ctx, tuned)
	if err != nil {
		log.Fatal(err)
	}
	for m, name := range modules {
		g := cmp.PerModule[m]
		fmt.Printf("%s: distance %.12f relative %.12f cosine %.12f\n", name, g.Distance, g.Relative, g.Cosine)
	}
	fmt.Printf("total: distance %.12f\n", cmp.Total.Distance)

	// Rewind each module to its pre-trained value, the others fine-tuned.
	for m, name := range modules {
		if err := out.Rewind(ctx, pre, tuned, m, 0); err != nil {
			log.Fatal(err)
		}
		d, err := out.Distance(ctx, tuned)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("rewound %s: distance to fine-tuned %.12f\n", name, d.Total)
	}
	// Halfway between the checkpoints.
	if err := out.Interpolate(ctx, pre, tuned, 0.5); err != nil {
		log.Fatal(err)
	}
	d, err := out.Distance(ctx, pre)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("halfway: distance to pre-trained %.12f, head.weight[0] %.6f\n", d.Total, scratch[2][0])
}
