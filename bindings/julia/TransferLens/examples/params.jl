# Weight-space analysis from Julia: how far fine-tuning moved each module of a pre-trained model,
# and what rewinding one module to its pre-trained value does. The checkpoints are Julia arrays
# wrapped in place (a Julia array of size (4, 3) is the C-order tensor [3, 4]); in real code they
# may come from safetensors files (`load_params`).
using TransferLens

# A checkpoint of a toy model: encoder.weight [3, 4], encoder.bias [3], head.weight [2, 3].
function checkpoint(step)
    sizes = ((4, 3), (3,), (3, 2))
    tensor(t, n) = Float32[0.5 * sin(1 + 0.7 * i + 2 * t) + step * 0.05 * (t + 1) * cos(0.3 * i + t) for i in 0:n-1]
    return [reshape(tensor(t, prod(sz)), sz) for (t, sz) in zip(0:2, sizes)]
end
wrap(ctx, c) = wrap_params(ctx, ["encoder.weight" => c[1], "encoder.bias" => c[2], "head.weight" => c[3]])

ctx = Context()
scratch = checkpoint(0)
pre, tuned, out = wrap(ctx, checkpoint(0)), wrap(ctx, checkpoint(1)), wrap(ctx, scratch)

modules = module_names(pre) # "encoder", "head"
cmp = compare(ctx, pre, tuned)
for (name, g) in zip(modules, cmp.per_module)
    println(name, ": distance ", g.distance, " relative ", g.relative, " cosine ", g.cosine)
end

# Rewind each module to its pre-trained value (modules are numbered from 1), the others fine-tuned.
rewound = [distance(ctx, rewind!(out, ctx, pre, tuned, m, 0.0), tuned).total for m in eachindex(modules)]
println("rewound: distances to fine-tuned ", rewound)

# Halfway between the checkpoints; the result lands in `scratch`.
halfway = distance(ctx, interpolate!(out, ctx, pre, tuned, 0.5), pre).total
println("halfway: distance to pre-trained ", halfway, ", head.weight[1] ", scratch[3][1])
foreach(close, (pre, tuned, out, ctx))

(modules = modules, distances = [g.distance for g in cmp.per_module], total = cmp.total.distance,
 rewound = rewound, halfway = halfway)
