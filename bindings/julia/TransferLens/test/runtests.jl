# Tests of the Julia binding: values against a plain Float64 reference written here, both matrix
# layouts (zero-copy transposed views and copied plain matrices), the accumulator protocol and
# the errors. Run with `julia --project=bindings/julia/TransferLens -e 'using Pkg; Pkg.test()'`
# after `cargo build --release --lib`.
using TransferLens
using TransferLens: TransferLensError, STATUS_DEGENERATE_INPUT, STATUS_NON_FINITE, STATUS_SHAPE_MISMATCH,
                    STATUS_INVALID_ARGUMENT, STATUS_NULL_ARGUMENT, STATUS_UNSUPPORTED_DTYPE,
                    STATUS_DEVICE_UNAVAILABLE
using LinearAlgebra
using Random
using Test

# Reference: feature-space HSIC of column-centered samples × features data (Kornblith et al.
# 2019); debiased, the U-statistic of Song et al. (2012) in feature-space form.
function ref_hsic(X::Matrix{Float64}, Y::Matrix{Float64}, debiased::Bool)
    fro = sum(abs2, X' * Y)
    debiased || return fro
    n = size(X, 1)
    rx = vec(sum(abs2, X; dims = 2))
    ry = vec(sum(abs2, Y; dims = 2))
    return fro - n / (n - 2) * dot(rx, ry) + sum(rx) * sum(ry) / ((n - 1) * (n - 2))
end
function ref_cka(X, Y, debiased::Bool)
    Xc = Float64.(X) .- sum(Float64.(X); dims = 1) ./ size(X, 1)
    Yc = Float64.(Y) .- sum(Float64.(Y); dims = 1) ./ size(Y, 1)
    return ref_hsic(Xc, Yc, debiased) / sqrt(ref_hsic(Xc, Xc, debiased) * ref_hsic(Yc, Yc, debiased))
end

rng = MersenneTwister(7)
mixed(X, q, noise) = X * randn(rng, size(X, 2), q) .+ noise .* randn(rng, size(X, 1), q)

@testset "TransferLens" begin
    @testset "basics" begin
        @test occursin(r"^\d+\.\d+\.\d+$", TransferLens.version())
        @test TransferLens.abi_version() == 1
        @test status_name(STATUS_DEGENERATE_INPUT) == "TL_STATUS_DEGENERATE_INPUT"
        @test status_name(99) == "TL_STATUS_UNKNOWN"
        for s in instances(TransferLens.Status)
            @test status_name(s) == "TL_" * string(s)
        end
    end

    @testset "context" begin
        ctx = Context(BACKEND_CPU)
        @test backend(ctx) == BACKEND_CPU
        close(ctx)
        close(ctx) # twice is a no-op
        err = try
            backend(ctx)
        catch e
            e
        end
        @test err isa TransferLensError && err.status == STATUS_NULL_ARGUMENT
        try
            cuda = Context(BACKEND_CUDA, 0)
            @test backend(cuda) == BACKEND_CUDA
            close(cuda)
        catch e
            @test e isa TransferLensError && e.status == STATUS_DEVICE_UNAVAILABLE && !isempty(e.message)
        end
        @test backend(Context()) in (BACKEND_CPU, BACKEND_CUDA)
    end

    ctx = Context(BACKEND_CPU)

    @testset "cka_linear, n=$n p=$p q=$q" for (n, p, q) in ((5, 1, 3), (17, 7, 5), (9, 33, 2), (64, 12, 12))
        X = randn(rng, n, p)            # samples × features
        Y = mixed(X, q, 0.5)
        for est in (BIASED, DEBIASED)
            want = ref_cka(X, Y, est == DEBIASED)
            # Plain matrices are samples × features and copied.
            @test cka_linear(ctx, X, Y, est) ≈ want rtol = 1e-10
            # Features × samples arrays through transpose, adjoint, PermutedDimsArray: no copy.
            Ht, Gt = permutedims(X), permutedims(Y)
            @test cka_linear(ctx, transpose(Ht), transpose(Gt), est) ≈ want rtol = 1e-10
            @test cka_linear(ctx, Ht', Gt', est) ≈ want rtol = 1e-10
            @test cka_linear(ctx, PermutedDimsArray(Ht, (2, 1)), PermutedDimsArray(Gt, (2, 1)), est) ≈ want rtol = 1e-10
            # Float32 and Float16: the reference sees the rounded values.
            X32, Y32 = Float32.(X), Float32.(Y)
            @test cka_linear(ctx, X32, transpose(permutedims(Y32)), est) ≈ ref_cka(X32, Y32, est == DEBIASED) atol = 1e-5
            X16, Y16 = Float16.(X), Float16.(Y)
            @test cka_linear(ctx, X16, Y16, est) ≈ ref_cka(X16, Y16, est == DEBIASED) atol = 1e-5
        end
    end

    @testset "layouts never give a silently wrong answer" begin
        X = randn(rng, 13, 5)
        Y = mixed(X, 3, 0.7)
        want = ref_cka(X, Y, true)
        # A batch of columns of a wider features × samples array: strided, no copy.
        H = randn(rng, 5, 40)
        H[:, 11:23] .= permutedims(X)
        @test cka_linear(ctx, transpose(view(H, :, 11:23)), Y, DEBIASED) ≈ want rtol = 1e-10
        # Rows of a features × samples array that skip features: not unit stride, copied.
        W = randn(rng, 10, 13)
        W[1:2:end, :] .= permutedims(X)
        @test cka_linear(ctx, transpose(view(W, 1:2:9, :)), Y, DEBIASED) ≈ want rtol = 1e-10
        # A samples × features view of a larger matrix: copied.
        big = randn(rng, 20, 9)
        big[3:15, 2:6] .= X
        @test cka_linear(ctx, view(big, 3:15, 2:6), Y, DEBIASED) ≈ want rtol = 1e-10
        # The same memory read the other way round is another matrix: with 13 samples of 5
        # features, transpose(X) has 5 "samples" and cannot be compared with Y's 13.
        err = try
            cka_linear(ctx, transpose(X), Y, DEBIASED)
        catch e
            e
        end
        @test err isa TransferLensError && err.status == STATUS_SHAPE_MISMATCH
    end

    @testset "bfloat16 bits" begin
        X = randn(rng, 11, 4)
        Y = mixed(X, 3, 0.5)
        bits(A) = map(v -> UInt16(reinterpret(UInt32, Float32(v)) >> 16), A) # truncation: exact values below
        value(b) = Float64(reinterpret(Float32, UInt32(b) << 16))
        Xb, Yb = bits(X), bits(Y)
        got = cka_linear(ctx, BFloat16Bits(Xb), BFloat16Bits(transpose(permutedims(Yb))), BIASED)
        @test got ≈ ref_cka(value.(Xb), value.(Yb), false) atol = 1e-5
    end

    @testset "cka_matrix" begin
        a = randn(rng, 21, 6)
        b = mixed(a, 4, 0.3)
        c = mixed(b, 9, 1.0)
        d = mixed(a, 3, 2.0)
        e = randn(rng, 21, 5)
        for est in (BIASED, DEBIASED)
            M = cka_matrix(ctx, [a, transpose(permutedims(b)), c], [d, e], est)
            @test size(M) == (3, 2)
            for (i, x) in enumerate((a, b, c)), (j, y) in enumerate((d, e))
                @test M[i, j] ≈ ref_cka(x, y, est == DEBIASED) rtol = 1e-10
            end
        end
    end

    @testset "accumulator" begin
        n = 37
        X0 = randn(rng, n, 5)
        X1 = mixed(X0, 3, 0.4)
        Y0 = mixed(X0, 4, 1.0)
        X1o = X1 .+ 1000.0 # an offset the shift must absorb
        for est in (BIASED, DEBIASED)
            deb = est == DEBIASED
            acc = CkaAccumulator(ctx, 2, 1, est)
            @test state_size(acc) == (0, 0)
            for r in (1:10, 11:11, 12:30, 31:n) # uneven batches, one of a single row
                update!(acc, [X0[r, :], X1o[r, :]], [Y0[r, :]])
            end
            R = result(acc)
            @test size(R) == (2, 1)
            @test R[1, 1] ≈ ref_cka(X0, Y0, deb) rtol = 1e-9
            @test R[2, 1] ≈ ref_cka(X1, Y0, deb) rtol = 1e-9

            p = CkaAccumulator(ctx, 2, 1, est)
            q = CkaAccumulator(ctx, 2, 1, est)
            update!(p, [X0[1:15, :], X1o[1:15, :]], [Y0[1:15, :]])
            update!(q, [X0[16:n, :], X1o[16:n, :]], [Y0[16:n, :]])
            m = CkaAccumulator(ctx, 2, 1, est)
            update!(m, [X0[1:15, :], X1o[1:15, :]], [Y0[1:15, :]])
            merge!(m, q)
            @test result(m)[2, 1] ≈ R[2, 1] rtol = 1e-10

            sp = export_state(p)
            @test sp.moments[1] == 15
            rebase!(q, sp.shift)
            sq = export_state(q)
            fresh = CkaAccumulator(ctx, 2, 1, est)
            set_widths!(fresh, [5, 3, 4])
            import_state!(fresh, CkaState(sp.shift, sp.moments .+ sq.moments))
            @test result(fresh) ≈ R rtol = 1e-9
            foreach(close, (acc, p, q, m, fresh))
        end
    end

    @testset "errors" begin
        ok = randn(rng, 6, 2)
        three = randn(rng, 3, 2)
        nan = copy(ok)
        nan[2, 2] = NaN
        status_of(f) =
            try
                f()
                nothing
            catch e
                e isa TransferLensError || rethrow()
                @test !isempty(e.message)
                e.status
            end
        @test status_of(() -> cka_linear(ctx, three, three, DEBIASED)) == STATUS_DEGENERATE_INPUT
        @test status_of(() -> cka_linear(ctx, fill(2.5, 6, 2), ok, BIASED)) == STATUS_DEGENERATE_INPUT
        @test status_of(() -> cka_linear(ctx, nan, ok, BIASED)) == STATUS_NON_FINITE
        @test status_of(() -> cka_linear(ctx, ok, three, BIASED)) == STATUS_SHAPE_MISMATCH
        @test status_of(() -> cka_linear(ctx, rand(Int, 6, 2), ok, BIASED)) == STATUS_UNSUPPORTED_DTYPE
        @test status_of(() -> cka_matrix(ctx, [], [ok], BIASED)) == STATUS_INVALID_ARGUMENT
        @test status_of(() -> CkaAccumulator(ctx, 0, 1, BIASED)) == STATUS_INVALID_ARGUMENT

        acc = CkaAccumulator(ctx, 1, 1, BIASED)
        @test status_of(() -> result(acc)) == STATUS_DEGENERATE_INPUT
        @test status_of(() -> update!(acc, [ok, ok], [ok])) == STATUS_SHAPE_MISMATCH
        update!(acc, [ok], [ok])
        @test status_of(() -> update!(acc, [randn(rng, 6, 3)], [ok])) == STATUS_SHAPE_MISMATCH
        @test status_of(() -> set_widths!(acc, [2, 2])) == STATUS_INVALID_ARGUMENT
        @test status_of(() -> rebase!(acc, [1.0])) == STATUS_SHAPE_MISMATCH
        @test status_of(() -> import_state!(acc, CkaState([0.0], [1.0]))) == STATUS_SHAPE_MISMATCH
        close(acc)
        @test status_of(() -> result(acc)) == STATUS_NULL_ARGUMENT
        @test sprint(showerror, TransferLensError(STATUS_NON_FINITE, "x")) == "TransferLensError: TL_STATUS_NON_FINITE: x"
    end

    @testset "parameter sets" begin
        pctx = Context(BACKEND_CPU)
        status_of(f) =
            try
                f()
                nothing
            catch e
                e isa TransferLensError || rethrow()
                @test !isempty(e.message)
                e.status
            end
        # A model as PyTorch stores it (C order): conv1.weight F32 [2, 3], layer1.0.weight F64 [4],
        # layer1.1.bias F32 [2], fc.bias F64 [3], and an I64 counter carried through untouched.
        randmodel() = (conv = randn(rng, Float32, 6), l10 = randn(rng, 4), l11 = randn(rng, Float32, 2),
                       fc = randn(rng, 3))
        function write_safetensors(path, m)
            data = UInt8[]
            header = String[]
            function add(name, dtype, shape, v)
                start = length(data)
                append!(data, reinterpret(UInt8, v))
                push!(header, "\"$name\":{\"dtype\":\"$dtype\",\"shape\":[$(join(shape, ","))]," *
                              "\"data_offsets\":[$start,$(length(data))]}")
            end
            add("conv1.weight", "F32", (2, 3), m.conv)
            add("layer1.0.weight", "F64", (4,), m.l10)
            add("bn.num_batches_tracked", "I64", (), Int64[42])
            add("layer1.1.bias", "F32", (2,), m.l11)
            add("fc.bias", "F64", (3,), m.fc)
            json = "{\"__metadata__\":{\"format\":\"pt\"}," * join(header, ",") * "}"
            open(path, "w") do io
                write(io, htol(UInt64(sizeof(json))))
                write(io, json)
                write(io, data)
            end
        end
        modules(m) = [Float64.(m.conv), vcat(m.l10, Float64.(m.l11)), m.fc]
        ma, mb = randmodel(), randmodel()
        dir = mktempdir()
        write_safetensors(joinpath(dir, "a.safetensors"), ma)
        write_safetensors(joinpath(dir, "b.safetensors"), mb)
        a = load_params(pctx, joinpath(dir, "a.safetensors"))
        b = load_params(pctx, joinpath(dir, "b.safetensors"))
        @test tensor_count(a) == 5
        @test module_names(a) == ["conv1", "layer1", "fc"]
        @test find_module(a, "fc") == 3
        ra, rb = modules(ma), modules(mb)

        d = distance(pctx, a, b)
        @test d.per_module ≈ [norm(ra[k] - rb[k]) for k in 1:3] rtol = 1e-12
        @test d.total ≈ norm(vcat(ra...) - vcat(rb...)) rtol = 1e-12
        n = norms(pctx, a)
        @test n.per_module ≈ norm.(ra) rtol = 1e-12
        @test n.total ≈ norm(vcat(ra...)) rtol = 1e-12
        c = compare(pctx, a, b)
        @test [g.numel for g in c.per_module] == [6, 6, 3]
        @test [g.cosine for g in c.per_module] ≈ [dot(ra[k], rb[k]) / (norm(ra[k]) * norm(rb[k])) for k in 1:3] rtol = 1e-12
        @test [g.relative for g in c.per_module] ≈ [norm(ra[k] - rb[k]) / norm(ra[k]) for k in 1:3] rtol = 1e-12
        @test c.total.distance ≈ d.total rtol = 1e-12

        out = copy(a)
        for λ in (-0.5, 0.3, 2.0)
            interpolate!(out, pctx, a, b, λ)
            @test tensor_data(out, "conv1.weight") ≈ Float32.((1 - λ) .* ma.conv .+ λ .* mb.conv) rtol = 1e-6
            @test tensor_data(out, "fc.bias") ≈ (1 - λ) .* ma.fc .+ λ .* mb.fc rtol = 1e-14
        end
        @test tensor_data(interpolate!(out, pctx, a, b, 1.0), "conv1.weight") == mb.conv
        interpolate_module!(out, pctx, a, b, 0.5, find_module(a, "layer1"))
        @test tensor_data(out, "conv1.weight") == mb.conv
        @test tensor_data(out, "layer1.0.weight") ≈ 0.5 .* ma.l10 .+ 0.5 .* mb.l10 rtol = 1e-14
        rewind!(out, pctx, a, b, 3, 0.0)
        @test tensor_data(out, "fc.bias") == ma.fc
        @test tensor_data(out, "layer1.0.weight") == mb.l10
        save_params(interpolate!(out, pctx, a, b, 0.3), joinpath(dir, "mid.safetensors"))
        mid = load_params(pctx, joinpath(dir, "mid.safetensors"))
        @test distance(pctx, mid, out).total == 0.0

        # Wrapped Julia arrays: written and read in place.
        live = (conv = zeros(Float32, 3, 2), l10 = zeros(4), l11 = zeros(Float32, 2), fc = zeros(3))
        w = wrap_params(pctx, ["conv1.weight" => live.conv, "layer1.0.weight" => live.l10,
                               "layer1.1.bias" => live.l11, "fc.bias" => live.fc])
        @test module_count(w) == 3
        interpolate!(w, pctx, a, b, 1.0)
        @test vec(live.conv) == mb.conv && live.fc == mb.fc
        interpolate!(w, pctx, a, b, 0.25)
        @test live.fc ≈ 0.75 .* ma.fc .+ 0.25 .* mb.fc rtol = 1e-14
        live.conv .= reshape(ma.conv, 3, 2)
        @test distance(pctx, w, a).per_module[1] == 0.0
        w16 = wrap_params(pctx, ["h.weight" => BFloat16Bits(UInt16[0x3f80, 0x4000])])
        @test tensor_data(w16, "h.weight") == UInt16[0x3f80, 0x4000]
        @test norms(pctx, w16).total ≈ sqrt(5)

        # Grouping.
        set_grouping!(a, GROUP_DEPTH; depth = 2)
        @test module_names(a) == ["conv1.weight", "layer1.0", "layer1.1", "fc.bias"]
        set_grouping!(a, GROUP_TENSOR)
        @test module_count(a) == 4
        @test distance(pctx, a, b).total ≈ d.total rtol = 1e-12
        set_grouping!(a, GROUP_PREFIXES; prefixes = ["layer1", "layer1.1"])
        @test module_names(a) == ["conv1.weight", "layer1", "layer1.1", "fc.bias"]
        @test status_of(() -> set_grouping!(a, GROUP_PREFIXES; prefixes = ["layer1"], unmatched = UNMATCHED_ERROR)) ==
              TransferLens.STATUS_NOT_FOUND
        @test module_count(a) == 4
        set_grouping!(a, GROUP_FIRST)
        @test module_count(a) == 3

        # Errors.
        @test status_of(() -> load_params(pctx, joinpath(dir, "missing"))) == TransferLens.STATUS_IO
        @test status_of(() -> module_name(a, 4)) == TransferLens.STATUS_NOT_FOUND
        @test status_of(() -> find_module(a, "bn")) == TransferLens.STATUS_NOT_FOUND
        @test status_of(() -> tensor_data(a, "bn.num_batches_tracked")) == STATUS_UNSUPPORTED_DTYPE
        @test status_of(() -> interpolate!(out, pctx, a, out, 0.5)) == STATUS_INVALID_ARGUMENT
        @test status_of(() -> interpolate!(out, pctx, a, b, Inf)) == STATUS_INVALID_ARGUMENT
        @test status_of(() -> rewind!(out, pctx, a, b, 4, 0.5)) == TransferLens.STATUS_NOT_FOUND
        @test status_of(() -> set_grouping!(a, GROUP_DEPTH; depth = 0)) == STATUS_INVALID_ARGUMENT
        @test status_of(() -> wrap_params(pctx, ["x" => [1, 2]])) == STATUS_UNSUPPORTED_DTYPE
        onlyconv = wrap_params(pctx, ["conv1.weight" => zeros(Float32, 3, 2)])
        @test status_of(() -> distance(pctx, a, onlyconv)) == STATUS_SHAPE_MISMATCH
        foreach(close, (a, b, out, mid, w, w16, onlyconv))
        close(a) # twice is a no-op
        @test status_of(() -> module_count(a)) == STATUS_NULL_ARGUMENT
        close(pctx)
    end

    # Evaluators, curves, barriers, criticality, rewind and the data tools, with a quadratic toy
    # loss L(w) = ||w||^2 / (2K) evaluated in a Julia callback.
    @testset "analysis" begin
        status_of(f) =
            try
                f()
                nothing
            catch e
                e isa TransferLensError || rethrow()
                e.status
            end
        actx = Context(BACKEND_CPU)
        K = 500
        init_w = randn(rng, Float32, K)
        final_w = zeros(Float32, K)
        live_w = zeros(Float32, K)
        a = sum(abs2, Float64.(init_w)) / K
        init = wrap_params(actx, ["w.weight" => init_w])
        fin = wrap_params(actx, ["w.weight" => final_w])
        live = wrap_params(actx, ["w.weight" => live_w])
        calls = Ref(0)
        ev = Evaluator(function (_)
                           calls[] += 1
                           l = sum(abs2, Float64.(live_w)) / (2K)
                           return Metrics(l, l, 1 - l)
                       end)
        lambdas = [-1, 0, 0.25, 0.5, 1, 1.5, 2]
        curve = interpolation_curve(actx, ev, init, fin, live, lambdas)
        @test calls[] == 7
        @test [m.loss for m in curve] ≈ [(1 - l)^2 * a / 2 for l in lambdas] rtol = 1e-5
        b = barrier(lambdas, curve, METRIC_LOSS; tolerance = 1e-9)
        @test b.value == 0 && b.same_basin == 1
        bump = [Metrics(0.1, 0.1, 0.9), Metrics(0.5, 0.5, 0.5), Metrics(0.2, 0.2, 0.8)]
        b = barrier([0, 0.5, 1], bump, METRIC_ACCURACY; tolerance = 0.01)
        @test b.value ≈ 0.35 atol = 1e-12
        @test b.peak_lambda == 0.5 && b.same_basin == 0 && finish(b) == 0.8

        o = CriticalityOptions()
        @test o.size == sizeof(CriticalityOptions) && o.alphas == 11 && o.samples == 10
        @test o.refined == 1 && o.noise_relative == 1 && o.eps_relative == 2 && o.sigma_floor == 1e-3 &&
              o.confidence == 2 && o.repeats == 3
        ref = CriticalityOptions(reference = true)
        @test ref.refined == 0 && ref.sigmas == 11 && ref.sigma_floor == 0 && ref.confidence == 0 && ref.repeats == 1
        @test status_of(() -> module_criticality(actx, ev, init, fin, live, 1;
                                                 opts = CriticalityOptions(tolerance = 1e-300))) == STATUS_INVALID_ARGUMENT
        eps = 0.3
        want = Inf
        for i in 1:200000
            al = i / 200000
            s2 = 2 * eps - (1 - al)^2 * a
            if 0 < s2 <= 1
                want = min(want, al^2 * K * a / s2)
            end
        end
        o = CriticalityOptions(reference = true, metric = METRIC_LOSS, eps_relative = 0, eps = eps, refined = 1,
                               tolerance = 1e-3, alpha_steps = 12, seed = 3)
        c = module_criticality(actx, ev, init, fin, live, 1; opts = o)
        @test c.value / want ≈ 1 atol = 0.05
        @test c.numel == K && c.expected <= eps
        c2 = module_criticality(actx, ev, nothing, nothing, live, 1; checkpoints = [init, fin], opts = o)
        @test c2.value ≈ c.value rtol = 1e-6
        net = network_criticality(actx, ev, init, fin, live; opts = o)
        @test net.summary.total == sum(m.value for m in net.modules)
        @test isfinite(net.summary.joint_expected)
        @test pac_bayes_bound(net.modules, net.summary.joint_expected, 1000, 0.05) > net.summary.joint_expected
        @test isfinite(pac_bayes_bound([c], 0.1, 1000, 0.05))
        @test status_of(() -> pac_bayes_bound([c], 0.1, 1, 0.05)) == STATUS_INVALID_ARGUMENT
        @test status_of(() -> pac_bayes_bound([c], NaN, 1000, 0.05)) == STATUS_INVALID_ARGUMENT
        # The full reports: three repeats, the size-aware measures, the rewind measures.
        o3 = CriticalityOptions(o; repeats = 3)
        rep = module_criticality_report(actx, ev, init, fin, live, 1; opts = o3)
        @test rep.size == sizeof(CriticalityReport) && rep.feasible == 1 && rep.repeats == 3
        @test rep.value / want ≈ 1 atol = 0.05
        @test rep.spread > 0 && rep.per_parameter == rep.value / K
        @test rep.pac_bayes_term ≈ K * log1p(rep.value / K) rtol = 1e-12
        @test rep.rewound_metric ≈ a / 2 rtol = 1e-5
        @test rep.rewind_area ≈ a / 6 + a * 0.01 / 12 rtol = 1e-5
        nrep = network_criticality_report(actx, ev, init, fin, live; opts = o3)
        @test nrep.summary.total == nrep.modules[1].value && nrep.summary.ranking_stable == 1
        @test nrep.summary.pac_bayes_kl == nrep.modules[1].pac_bayes_term && nrep.summary.infeasible_modules == 0
        b = pac_bayes_report(nrep.summary, 1000, 0.05; test_error = 0.1, n_test = 500)
        @test b.has_held_out == 1 && b.held_out ≈ 0.1 + sqrt(log(1 / 0.05) / 1000) rtol = 1e-12
        @test b.vacuous == (b.bound > 1)
        tiny = network_criticality_report(actx, ev, init, fin, live;
                                          opts = CriticalityOptions(o; eps = 1e-8, noise_relative = 0, refined = 0,
                                                                    sigma_floor = 1e-3))
        @test isinf(tiny.modules[1].value) && tiny.modules[1].feasible == 0 && tiny.summary.infeasible_modules == 1
        @test pac_bayes_report(tiny.summary, 1000, 0.05).vacuous == 1
        r = rewind_curve(actx, ev, init, fin, live, 1, [1.0, 0.0])
        @test r[1].loss == 0
        @test r[2].loss ≈ a / 2 rtol = 1e-5

        bad = Evaluator(_ -> error("host model exploded"))
        err = try
            interpolation_curve(actx, bad, init, fin, live, lambdas)
            nothing
        catch e
            e
        end
        @test err isa TransferLensError && err.status == TransferLens.STATUS_CALLBACK
        @test occursin("host model exploded", err.message)
        close(bad)
        close(ev)

        sizes = [4, 6, 3]
        x = randn(rng, Float32, 4, 40)
        y = [UInt32(x[1, i] > 0) + UInt32(x[2, i] > 0.5) for i in 1:40]
        mlp = Evaluator(sizes, x, y)
        p1, p2 = mlp_init(sizes, 1), mlp_init(sizes, 2)
        m = evaluate(mlp, p2)
        @test m.loss > 0 && m.accuracy + m.error ≈ 1
        r = rewind_curve(actx, mlp, p1, p2, copy(p2), 2, [1.0, 0.5])
        @test r[1].loss == m.loss

        img = Float32.(reshape(0:31, 4, 4, 1, 2))
        orig = copy(img)
        @test block_shuffle!(img, 4, 5) == orig
        block_shuffle!(img, 2, 5)
        @test img != orig && sort(vec(img)) == sort(vec(orig))
        @test status_of(() -> block_shuffle!(img, 3, 5)) == STATUS_INVALID_ARGUMENT
        ag = prediction_agreement([0, 1, 9, 9, 7, 5], [0, 8, 2, 9, 6, 5], 0:5)
        @test ag.counts == [2, 1, 1, 1, 1] && ag.category == [0, 1, 2, 3, 4, 0]
        close(actx)
    end

    @testset "cnn" begin
        status_of(f) =
            try
                f()
                nothing
            catch e
                e isa TransferLensError || rethrow()
                e.status
            end
        spec = """{"input": [1, 6, 6], "classes": 2, "layers": [
            {"type": "conv", "name": "conv1", "out": 4, "kernel": 3, "padding": 1},
            {"type": "groupnorm", "name": "gn1", "groups": 2}, {"type": "relu"},
            {"type": "block", "name": "layer1", "out": 4, "groups": 2},
            {"type": "global_avgpool"}, {"type": "dense", "name": "fc", "out": 2}]}"""
        cnn = Cnn(spec)
        @test input_shape(cnn) == (1, 6, 6) && classes(cnn) == 2
        @test module_names(cnn) == ["conv1", "layer1", "fc"]
        @test module_width(cnn, 1) == 4 * 36 && module_width(cnn, 3) == 2
        @test status_of(() -> module_width(cnn, 4)) == TransferLens.STATUS_NOT_FOUND
        # Horizontal stripes (class 0) or a checkerboard (class 1), noisy; w × h × c × n.
        n = 32
        y = [UInt32(r % 2) for r in 0:n-1]
        x = Array{Float32,4}(undef, 6, 6, 1, n)
        for r in 1:n, i in 0:5, j in 0:5
            on = y[r] == 0 ? isodd(i) : isodd(i + j)
            x[j+1, i+1, 1, r] = (on ? 1.0f0 : -1.0f0) + 0.3f0 * randn(rng, Float32)
        end
        init = cnn_init(cnn, 1)
        @test module_count(init) == 3
        trained = copy(init)
        opts = TrainOptions(epochs = 8, batch = 8, schedule = LR_COSINE)
        @test opts.size == sizeof(TrainOptions) && opts.momentum == 0.9
        losses = train!(cnn, trained, x, y; opts = opts)
        @test length(losses) == 8 && losses[8] < 0.5 * losses[1]
        ev = Evaluator(cnn, x, y)
        before, after = evaluate(ev, init), evaluate(ev, trained)
        @test after.loss < before.loss && after.error <= before.error
        cctx = Context(BACKEND_CPU)
        live = copy(init)
        curve = interpolation_curve(cctx, ev, init, trained, live, [0.0, 0.5, 1.0])
        @test curve[1] == before && curve[3] == after
        c = module_criticality(cctx, ev, init, trained, live, 2;
                               opts = CriticalityOptions(metric = METRIC_LOSS, eps = 0.1, samples = 2, repeats = 1))
        @test c.value >= 0 && c.numel > 0
        logits = activations(cnn, trained, x, 3)
        @test size(logits) == (2, n)
        @test after.error ≈ count(r -> (logits[2, r] > logits[1, r]) != (y[r] == 1), 1:n) / n
        @test all(isfinite, activations(cnn, trained, x, 2))
        sizes = [36, 8, 2]
        mlp = mlp_init(sizes, 2)
        mlp_losses = mlp_train!(sizes, mlp, reshape(x, 36, n), y; opts = opts)
        @test mlp_losses[8] < mlp_losses[1]
        @test status_of(() -> Cnn("{\"input\": [1, 6")) == STATUS_INVALID_ARGUMENT
        @test status_of(() -> Evaluator(cnn, x, fill(UInt32(2), n))) == STATUS_INVALID_ARGUMENT
        @test status_of(() -> Evaluator(cnn, x[1:5, :, :, :], y)) == STATUS_SHAPE_MISMATCH
        @test status_of(() -> train!(cnn, mlp, x, y; opts = opts)) == TransferLens.STATUS_NOT_FOUND
        @test status_of(() -> train!(cnn, trained, x, y; opts = TrainOptions(lr = -1.0))) == STATUS_INVALID_ARGUMENT
        @test_throws TransferLensError TrainOptions(nonsense = 1)
        close(cctx)
        close(cnn)
        @test status_of(() -> cnn_init(cnn, 1)) == STATUS_NULL_ARGUMENT
    end

    close(ctx)

    # The README's example: the same data as the C and Go examples.
    @testset "example" begin
        example = include(joinpath(@__DIR__, "..", "examples", "cka.jl"))
        a = [0.1 1.2 -0.3; 0.8 -0.5 0.9; -1.1 0.4 0.2; 0.6 0.3 -0.7; -0.2 -0.9 1.4; 0.5 0.7 0.1]
        b = [0.3 1.0; 0.9 -0.2; -1.0 0.6; 0.4 0.5; -0.1 -1.2; 0.6 0.8]
        want = ref_cka(Float64.(Float32.(a)), Float64.(Float32.(b)), true)
        @test example.one_call ≈ want atol = 1e-6
        @test example.streamed ≈ want atol = 1e-6
    end

    # The CNN example: the same run as the C++ and Go examples (checked there against the Rust API).
    @testset "cnn example" begin
        example = include(joinpath(@__DIR__, "..", "examples", "cnn.jl"))
        @test length(example.losses) == 6 && example.losses[6] < example.losses[1]
        @test example.errors[2] <= example.errors[1]
        @test -0.5 < example.cka <= 1.0
    end

    # The parameter-set example: the same checkpoints as the C++ and Go examples.
    @testset "params example" begin
        example = include(joinpath(@__DIR__, "..", "examples", "params.jl"))
        ckpt(step) = [Float64.(Float32[0.5 * sin(1 + 0.7 * i + 2 * t) + step * 0.05 * (t + 1) * cos(0.3 * i + t)
                                        for i in 0:n-1]) for (t, n) in zip(0:2, (12, 3, 6))]
        pre, tuned = ckpt(0), ckpt(1)
        want = [norm(vcat(pre[1:2]...) - vcat(tuned[1:2]...)), norm(pre[3] - tuned[3])]
        @test example.modules == ["encoder", "head"]
        @test example.distances ≈ want rtol = 1e-6
        @test example.total ≈ norm(want) rtol = 1e-6
        @test example.rewound ≈ want rtol = 1e-6
        @test example.halfway ≈ norm(want) / 2 rtol = 1e-6
    end
end
