# The built-in CNN from Julia: build it from a JSON spec, train it on 16 tiny images, watch the
# loss fall, and compare its first module's activations before and after training with CKA.
using TransferLens

cnn = Cnn("""{"input": [1, 4, 4], "classes": 2, "layers": [
    {"type": "conv", "name": "conv1", "out": 4, "kernel": 3, "padding": 1},
    {"type": "groupnorm", "name": "gn1", "groups": 2}, {"type": "relu"},
    {"type": "global_avgpool"}, {"type": "dense", "name": "fc", "out": 2}]}""")

# 16 images of 1 x 4 x 4 as a w × h × c × n array (the memory of NCHW images): class 1 bright in
# the top half, class 0 in the bottom.
labels = [UInt32(r % 2) for r in 0:15]
x = Array{Float32,4}(undef, 4, 4, 1, 16)
for r in 0:15, p in 0:15
    bright = (p < 8) == (labels[r+1] == 1) ? 1.0f0 : -1.0f0
    x[p % 4 + 1, p ÷ 4 + 1, 1, r + 1] = bright + 0.25f0 * Float32((r * 7 + p * 3) % 5) - 0.5f0
end

initial = cnn_init(cnn, 1)
trained = copy(initial)
losses = train!(cnn, trained, x, labels; opts = TrainOptions(epochs = 6, batch = 4, lr = 0.1, seed = 3,
                                                             schedule = LR_COSINE))
println("epoch losses: ", losses)

evaluator = Evaluator(cnn, x, labels)
before, after = evaluate(evaluator, initial), evaluate(evaluator, trained)
println("error: ", before.error, " -> ", after.error)

# Activations are width × n (one column per image); CKA takes samples × features, a transpose.
ctx = Context(BACKEND_CPU)
cka = cka_linear(ctx, transpose(activations(cnn, initial, x, 1)), transpose(activations(cnn, trained, x, 1)),
                 DEBIASED)
name = module_names(cnn)[1]
println("CKA($name initial, $name trained) = ", cka)
foreach(close, (evaluator, initial, trained, ctx, cnn))

(losses = losses, errors = (before.error, after.error), cka = cka)
