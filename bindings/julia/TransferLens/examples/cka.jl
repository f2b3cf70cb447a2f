# Linear CKA from Julia: activations in the layout of Flux and Lux (features × samples, one column
# per sample) are passed without a copy as `transpose(H)`, then streamed in two batches.
using TransferLens

# Activations of 6 samples: 3 features in layer A, 2 in layer B, one column per sample.
A = Float32[0.1 0.8 -1.1 0.6 -0.2 0.5
            1.2 -0.5 0.4 0.3 -0.9 0.7
            -0.3 0.9 0.2 -0.7 1.4 0.1]
B = Float32[0.3 0.9 -1.0 0.4 -0.1 0.6
            1.0 -0.2 0.6 0.5 -1.2 0.8]

ctx = Context()  # CUDA where available, else the CPU
one_call = cka_linear(ctx, transpose(A), transpose(B), DEBIASED)  # samples × features, no copy
println("debiased linear CKA = ", round(one_call; digits = 10))

acc = CkaAccumulator(ctx, 1, 1, DEBIASED)
for batch in (1:4, 5:6)
    update!(acc, [transpose(view(A, :, batch))], [transpose(view(B, :, batch))])
end
streamed = result(acc)[1, 1]
println("streamed in 2 batches = ", round(streamed; digits = 10))
close(acc)
close(ctx)

(one_call = one_call, streamed = streamed)
