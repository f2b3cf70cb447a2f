# Evaluators, interpolation curves, barriers, criticality, rewind curves and the data tools
# (included by TransferLens.jl).

@enum Metric::UInt32 METRIC_LOSS = 0 METRIC_ERROR = 1 METRIC_ACCURACY = 2

"""
    Metrics(loss, error, accuracy)

Metrics of a parameter set on an evaluation set (mirrors `tl_metrics`): mean `loss`, the 0-1
`error`, and `accuracy` (1 − error, or the host's own accuracy-like figure).
"""
struct Metrics
    loss::Float64
    error::Float64
    accuracy::Float64
end

"""
    BarrierResult

A performance barrier (mirrors `tl_barrier_result`): `value` (≥ 0), `peak_lambda`, the metric at
λ = 0 and 1 (`start`, `var"end"`; also `finish(b)`), and `same_basin` (1 when value ≤ tolerance).
"""
struct BarrierResult
    value::Float64
    peak_lambda::Float64
    start::Float64
    var"end"::Float64
    same_basin::Int32
end

"""The metric at λ = 1 of a [`BarrierResult`](@ref)."""
finish(b::BarrierResult) = getfield(b, :end)

"""
    CriticalityOptions(; kwargs...)

Options of module criticality (mirrors `tl_criticality_options`): start from the library's
defaults (`tl_criticality_options_default`), or with `reference = true` from the public
implementation's grid (`tl_criticality_options_reference`), and override fields by keyword, e.g.
`CriticalityOptions(metric = METRIC_LOSS, eps_relative = 0, eps = 0.3, noise_relative = 0)`.
`eps_relative` is 0 (eps is the threshold), 1 ((1 + eps) x the final metric) or 2 (the final
metric + eps, the default). `size` is always `sizeof(CriticalityOptions)`.
"""
struct CriticalityOptions
    size::Csize_t
    metric::UInt32
    eps_relative::UInt32
    eps::Float64
    noise_relative::UInt32
    noise_scale::Float64
    refined::UInt32
    alphas::UInt32
    sigmas::UInt32
    tolerance::Float64
    alpha_steps::UInt32
    samples::UInt32
    seed::UInt64
    sigma_floor::Float64
    confidence::Float64
    repeats::UInt32
end

function CriticalityOptions(; reference::Bool = false, kwargs...)
    d = reference ? ccall((:tl_criticality_options_reference, libtransferlens), CriticalityOptions, ()) :
        ccall((:tl_criticality_options_default, libtransferlens), CriticalityOptions, ())
    return CriticalityOptions(d; kwargs...)
end

"""
    CriticalityOptions(base::CriticalityOptions; kwargs...)

`base` with the fields given by keyword changed.
"""
function CriticalityOptions(d::CriticalityOptions; kwargs...)
    vals = Any[]
    for f in fieldnames(CriticalityOptions)
        if f == :size
            push!(vals, Csize_t(sizeof(CriticalityOptions)))
        elseif haskey(kwargs, f)
            v = kwargs[f]
            T = fieldtype(CriticalityOptions, f)
            push!(vals, v isa Enum ? T(Integer(v)) : v isa Bool ? T(v) : convert(T, v))
        else
            push!(vals, getfield(d, f))
        end
    end
    for k in keys(kwargs)
        (k in fieldnames(CriticalityOptions) && k != :size) ||
            throw(TransferLensError(STATUS_INVALID_ARGUMENT, "CriticalityOptions has no option $k"))
    end
    return CriticalityOptions(vals...)
end

"""One module's criticality (mirrors `tl_criticality`); `value` is `Inf` when infeasible."""
struct Criticality
    value::Float64
    alpha::Float64
    sigma::Float64
    noise_std::Float64
    expected::Float64
    numel::UInt64
    points::UInt64
end

"""
A network criticality's summary (mirrors `tl_network_summary`): `total` (`Inf` if a module is
infeasible), the final model's metric, the eps used, and `joint_expected`, the metric with every
module at its minimiser at once (the expectation term of [`pac_bayes_bound`](@ref)).
"""
struct NetworkSummary
    total::Float64
    final_metric::Float64
    eps::Float64
    joint_expected::Float64
end

"""
One module's full report (mirrors `tl_criticality_report`): `value` (the mean over the repeats,
`Inf` when infeasible), `per_parameter` (value / numel, to rank modules of different sizes),
`pac_bayes_term`, `spread` over the repeats, the minimiser of the first repeat, the metric with
only this module rewound (`rewound_metric`) and the area under its rewind curve, `feasible`
(1 or 0) and the number of repeats.
"""
struct CriticalityReport
    size::Csize_t
    value::Float64
    per_parameter::Float64
    pac_bayes_term::Float64
    spread::Float64
    alpha::Float64
    sigma::Float64
    noise_std::Float64
    expected::Float64
    expected_se::Float64
    rewound_metric::Float64
    rewind_area::Float64
    numel::UInt64
    points::UInt64
    feasible::UInt32
    repeats::UInt32
end

"""
A network criticality's report (mirrors `tl_network_report`): the total and its spread over the
repeats, the final metric, eps, the joint expectation, the bound's KL sum, how often the repeats
rank the modules by value / numel alike (`ranking_stable` 1 when always) and the infeasible
modules.
"""
struct NetworkReport
    size::Csize_t
    total::Float64
    total_spread::Float64
    final_metric::Float64
    eps::Float64
    joint_expected::Float64
    pac_bayes_kl::Float64
    ranking_agreement::Float64
    ranking_stable::UInt32
    infeasible_modules::UInt32
end

"""The PAC-Bayes bound with its reading (mirrors `tl_bound_report`)."""
struct BoundReport
    size::Csize_t
    bound::Float64
    held_out::Float64
    vacuous::UInt32
    has_held_out::UInt32
end

# A report struct with only its `size` set, for the library to fill.
sized(::Type{T}, size::Integer) where {T} =
    T(Csize_t(size), (zero(fieldtype(T, f)) for f in fieldnames(T)[2:end])...)

"""
    Evaluator(f)
    Evaluator(sizes, x, labels)

An evaluator. From a Julia function `f(params_handle) -> Metrics` (or a `(loss, error,
accuracy)` tuple): the library has just written the weights into the live set (a
[`wrap_params`](@ref) set over the host's model arrays, passed as `live` to the analyses), and
`f` evaluates the host's model. An exception thrown by `f` aborts the analysis with
`STATUS_CALLBACK` and its message. Or the built-in MLP with layer widths `sizes` on the samples
`x` (a features × samples matrix, one column per sample) with class `labels` (from 0).
Free with `close` (a finalizer does it otherwise).
"""
mutable struct Evaluator
    ptr::Ptr{Cvoid}
    callback::Any # the Julia function, kept alive with the evaluator
    function Evaluator(ptr::Ptr{Cvoid}, callback)
        ev = new(ptr, callback)
        finalizer(close, ev)
        return ev
    end
end

struct CallbackBox
    f::Any
end

as_metrics(m::Metrics) = m
as_metrics(m::Tuple) = Metrics(Float64(m[1]), Float64(m[2]), Float64(m[3]))
as_metrics(m::NamedTuple) = Metrics(Float64(m.loss), Float64(m.error), Float64(m.accuracy))

# The C callback: never lets a Julia exception unwind into the library.
function eval_trampoline(user::Ptr{Cvoid}, params::Ptr{Cvoid}, out::Ptr{Metrics})::Int32
    try
        box = unsafe_pointer_to_objref(user)::CallbackBox
        unsafe_store!(out, as_metrics(box.f(params)))
        return Int32(0)
    catch e
        msg = sprint(showerror, e)
        ccall((:tl_set_callback_error, libtransferlens), Cvoid, (Cstring,), replace(msg, '\0' => ' '))
        return Int32(1)
    end
end

function Evaluator(f)
    box = CallbackBox(f)
    cfn = @cfunction(eval_trampoline, Int32, (Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Metrics}))
    out = Ref{Ptr{Cvoid}}(C_NULL)
    check(ccall((:tl_evaluator_from_callback, libtransferlens), UInt32, (Ptr{Cvoid}, Any, Ref{Ptr{Cvoid}}),
                cfn, box, out))
    return Evaluator(out[], box)
end

function Evaluator(sizes::AbstractVector{<:Integer}, x::AbstractMatrix{<:Real}, labels::AbstractVector{<:Integer})
    s = Vector{UInt64}(sizes)
    xs = Matrix{Float32}(x) # features × samples: row-major samples × features
    ls = Vector{UInt32}(labels)
    out = Ref{Ptr{Cvoid}}(C_NULL)
    GC.@preserve s xs ls begin
        check(ccall((:tl_evaluator_mlp, libtransferlens), UInt32,
                    (Ptr{UInt64}, Csize_t, Ptr{Float32}, Ptr{UInt32}, UInt64, Ref{Ptr{Cvoid}}),
                    s, length(s), xs, ls, UInt64(size(xs, 2)), out))
    end
    return Evaluator(out[], nothing)
end

function Base.close(ev::Evaluator)
    if ev.ptr != C_NULL
        ccall((:tl_evaluator_destroy, libtransferlens), Cvoid, (Ptr{Cvoid},), ev.ptr)
        ev.ptr = C_NULL
    end
    return nothing
end

handle(ev::Evaluator) =
    ev.ptr == C_NULL ? throw(TransferLensError(STATUS_NULL_ARGUMENT, "use of a closed Evaluator")) : ev.ptr

"""
    set_callback_error(message)

Records a description of a failure from inside a callback that is about to fail (an
[`Evaluator`](@ref) callback does this itself for a thrown exception); `nothing` clears it.
"""
set_callback_error(message::Nothing) =
    ccall((:tl_set_callback_error, libtransferlens), Cvoid, (Ptr{UInt8},), C_NULL)
set_callback_error(message::AbstractString) =
    ccall((:tl_set_callback_error, libtransferlens), Cvoid, (Cstring,), message)

"""
    mlp_init(sizes, seed) -> Params

Initial weights of the built-in MLP (He-normal weights, zero biases; tensors fc1.weight,
fc1.bias, ...; one module per layer).
"""
function mlp_init(sizes::AbstractVector{<:Integer}, seed::Integer)
    s = Vector{UInt64}(sizes)
    out = Ref{Ptr{Cvoid}}(C_NULL)
    GC.@preserve s begin
        check(ccall((:tl_mlp_init, libtransferlens), UInt32, (Ptr{UInt64}, Csize_t, UInt64, Ref{Ptr{Cvoid}}),
                    s, length(s), UInt64(seed), out))
    end
    return Params(out[])
end

"""The [`Metrics`](@ref) of `p` (for a callback evaluator: the live set it evaluates)."""
function evaluate(ev::Evaluator, p::Params)
    out = Ref{Metrics}()
    GC.@preserve ev p begin
        check(ccall((:tl_evaluate, libtransferlens), UInt32, (Ptr{Cvoid}, Ptr{Cvoid}, Ref{Metrics}),
                    handle(ev), handle(p), out))
    end
    return out[]
end

"""
    interpolation_curve(ctx, ev, a, b, live, lambdas; module_index = 0) -> Vector{Metrics}

The metrics at `(1 − λ) a + λ b` for each λ, written into `live` (holding `a`'s weights).
`module_index` ≥ 1 moves only that module (the rest stays at `b`); 0 moves all.
"""
function interpolation_curve(ctx::Context, ev::Evaluator, a::Params, b::Params, live::Params,
                             lambdas::AbstractVector{<:Real}; module_index::Integer = 0)
    l = Vector{Float64}(lambdas)
    out = per_module_buffer(Metrics, length(l))
    GC.@preserve ctx ev a b live l out begin
        check(ccall((:tl_interpolation_curve, libtransferlens), UInt32,
                    (Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Float64}, Csize_t, Int64,
                     Ptr{Metrics}),
                    handle(ctx), handle(ev), handle(a), handle(b), handle(live), l, length(l),
                    Int64(module_index) - 1, out))
    end
    return out[1:length(l)]
end

"""
    barrier(lambdas, curve, metric; tolerance = 0.0) -> BarrierResult

The barrier of a curve (λs must contain 0 and 1).
"""
function barrier(lambdas::AbstractVector{<:Real}, curve::AbstractVector{Metrics}, metric::Metric;
                 tolerance::Real = 0.0)
    l = Vector{Float64}(lambdas)
    c = Vector{Metrics}(curve)
    length(l) == length(c) ||
        throw(TransferLensError(STATUS_SHAPE_MISMATCH, "$(length(l)) lambdas but $(length(c)) curve points"))
    out = Ref{BarrierResult}()
    GC.@preserve l c begin
        check(ccall((:tl_barrier, libtransferlens), UInt32,
                    (Ptr{Float64}, Ptr{Metrics}, Csize_t, UInt32, Float64, Ref{BarrierResult}),
                    l, c, length(l), UInt32(metric), Float64(tolerance), out))
    end
    return out[]
end

# (init, final, checkpoint pointers, count) for the criticality calls.
function path_args(init, final, checkpoints)
    if checkpoints === nothing
        return handle(init), handle(final), Ptr{Cvoid}[], Csize_t(0)
    end
    return C_NULL, C_NULL, Ptr{Cvoid}[handle(c) for c in checkpoints], Csize_t(length(checkpoints))
end

"""
    module_criticality(ctx, ev, init, final, live, i; checkpoints = nothing, opts = CriticalityOptions())

The criticality of module `i` (from 1) of `final` along the straight path from `init`, or along
the piecewise-linear path through `checkpoints` (a vector of `Params`; `init` and `final` are
then ignored and may be `nothing`).
"""
function module_criticality(ctx::Context, ev::Evaluator, init, final, live::Params, i::Integer;
                            checkpoints = nothing, opts::CriticalityOptions = CriticalityOptions())
    m = module_index(i)
    out = Ref{Criticality}()
    GC.@preserve ctx ev init final live checkpoints begin
        p_init, p_final, ck, nck = path_args(init, final, checkpoints)
        GC.@preserve ck begin
            check(ccall((:tl_module_criticality, libtransferlens), UInt32,
                        (Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Ptr{Cvoid}}, Csize_t, Ptr{Cvoid}, Csize_t,
                         Ref{CriticalityOptions}, Ref{Criticality}),
                        handle(ctx), handle(ev), p_init, p_final, isempty(ck) ? Ptr{Ptr{Cvoid}}(C_NULL) : pointer(ck), nck,
                        handle(live), m, opts, out))
        end
    end
    return out[]
end

"""
    network_criticality(ctx, ev, init, final, live; checkpoints = nothing, opts = CriticalityOptions())
        -> (modules::Vector{Criticality}, summary::NetworkSummary)

Every module's criticality and their sum (arguments as for [`module_criticality`](@ref)).
"""
function network_criticality(ctx::Context, ev::Evaluator, init, final, live::Params;
                             checkpoints = nothing, opts::CriticalityOptions = CriticalityOptions())
    n = module_count(checkpoints === nothing ? final : last(checkpoints))
    mods = per_module_buffer(Criticality, n)
    out = Ref{NetworkSummary}()
    GC.@preserve ctx ev init final live checkpoints mods begin
        p_init, p_final, ck, nck = path_args(init, final, checkpoints)
        GC.@preserve ck begin
            check(ccall((:tl_network_criticality, libtransferlens), UInt32,
                        (Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Ptr{Cvoid}}, Csize_t, Ptr{Cvoid},
                         Ref{CriticalityOptions}, Ptr{Criticality}, Csize_t, Ref{NetworkSummary}),
                        handle(ctx), handle(ev), p_init, p_final, isempty(ck) ? Ptr{Ptr{Cvoid}}(C_NULL) : pointer(ck), nck,
                        handle(live), opts, mods, n, out))
        end
    end
    return (modules = mods[1:n], summary = out[])
end

"""
    pac_bayes_bound(modules, expected, m, delta) -> Float64

The PAC-Bayes bound of the criticality theorem for `m` samples and confidence `delta`;
`expected` is the metric under the joint perturbation (`summary.joint_expected` of
[`network_criticality`](@ref)). `Inf` when a module is infeasible.
"""
function pac_bayes_bound(modules::AbstractVector{Criticality}, expected::Real, m::Integer, delta::Real)
    mods = Vector{Criticality}(modules)
    out = Ref{Float64}(0.0)
    GC.@preserve mods begin
        check(ccall((:tl_pac_bayes_bound, libtransferlens), UInt32,
                    (Ptr{Criticality}, Csize_t, Float64, UInt64, Float64, Ref{Float64}),
                    isempty(mods) ? Ptr{Criticality}(C_NULL) : pointer(mods), length(mods), Float64(expected), UInt64(m),
                    Float64(delta), out))
    end
    return out[]
end

"""
    module_criticality_report(ctx, ev, init, final, live, i; checkpoints = nothing,
                              opts = CriticalityOptions()) -> CriticalityReport

[`module_criticality`](@ref) with the full report.
"""
function module_criticality_report(ctx::Context, ev::Evaluator, init, final, live::Params, i::Integer;
                                   checkpoints = nothing, opts::CriticalityOptions = CriticalityOptions())
    m = module_index(i)
    out = Ref(sized(CriticalityReport, sizeof(CriticalityReport)))
    GC.@preserve ctx ev init final live checkpoints begin
        p_init, p_final, ck, nck = path_args(init, final, checkpoints)
        GC.@preserve ck begin
            check(ccall((:tl_module_criticality_report, libtransferlens), UInt32,
                        (Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Ptr{Cvoid}}, Csize_t, Ptr{Cvoid}, Csize_t,
                         Ref{CriticalityOptions}, Ref{CriticalityReport}),
                        handle(ctx), handle(ev), p_init, p_final, isempty(ck) ? Ptr{Ptr{Cvoid}}(C_NULL) : pointer(ck), nck,
                        handle(live), m, opts, out))
        end
    end
    return out[]
end

"""
    network_criticality_report(ctx, ev, init, final, live; checkpoints = nothing,
                               opts = CriticalityOptions())
        -> (modules::Vector{CriticalityReport}, summary::NetworkReport)

[`network_criticality`](@ref) with the full reports.
"""
function network_criticality_report(ctx::Context, ev::Evaluator, init, final, live::Params;
                                    checkpoints = nothing, opts::CriticalityOptions = CriticalityOptions())
    n = module_count(checkpoints === nothing ? final : last(checkpoints))
    n > 0 || throw(TransferLensError(STATUS_INVALID_ARGUMENT, "the final set has no modules"))
    mods = [sized(CriticalityReport, sizeof(CriticalityReport)) for _ in 1:n]
    out = Ref(sized(NetworkReport, sizeof(NetworkReport)))
    GC.@preserve ctx ev init final live checkpoints mods begin
        p_init, p_final, ck, nck = path_args(init, final, checkpoints)
        GC.@preserve ck begin
            check(ccall((:tl_network_criticality_report, libtransferlens), UInt32,
                        (Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Ptr{Cvoid}}, Csize_t, Ptr{Cvoid},
                         Ref{CriticalityOptions}, Ptr{CriticalityReport}, Csize_t, Ref{NetworkReport}),
                        handle(ctx), handle(ev), p_init, p_final, isempty(ck) ? Ptr{Ptr{Cvoid}}(C_NULL) : pointer(ck), nck,
                        handle(live), opts, mods, n, out))
        end
    end
    return (modules = mods, summary = out[])
end

"""
    pac_bayes_report(net::NetworkReport, m, delta; test_error = 0.0, n_test = 0) -> BoundReport

The PAC-Bayes bound from a network report with `m` = the samples the criticality was measured
on, whether it is vacuous, and with `n_test > 0` the held-out estimate beside it.
"""
function pac_bayes_report(net::NetworkReport, m::Integer, delta::Real; test_error::Real = 0.0, n_test::Integer = 0)
    out = Ref(sized(BoundReport, sizeof(BoundReport)))
    check(ccall((:tl_pac_bayes_report, libtransferlens), UInt32,
                (Ref{NetworkReport}, UInt64, Float64, Float64, UInt64, Ref{BoundReport}),
                net, UInt64(m), Float64(delta), Float64(test_error), UInt64(n_test), out))
    return out[]
end

"""
    rewind_curve(ctx, ev, init, final, live, i, alphas) -> Vector{Metrics}

The metrics of module `i` (from 1) rewound to `(1 − α) init + α final`, the rest at `final`.
"""
function rewind_curve(ctx::Context, ev::Evaluator, init::Params, final::Params, live::Params, i::Integer,
                      alphas::AbstractVector{<:Real})
    m = module_index(i)
    a = Vector{Float64}(alphas)
    out = per_module_buffer(Metrics, length(a))
    GC.@preserve ctx ev init final live a out begin
        check(ccall((:tl_rewind_curve, libtransferlens), UInt32,
                    (Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Cvoid}, Csize_t, Ptr{Float64}, Csize_t,
                     Ptr{Metrics}),
                    handle(ctx), handle(ev), handle(init), handle(final), handle(live), m, a, length(a), out))
    end
    return out[1:length(a)]
end

"""
    block_shuffle!(images, block, seed) -> images

Block shuffle in place of a `w × h × c × n` `Float32` array (the memory of `n` row-major
c × h × w images): each image is cut into `block × block` blocks, permuted by one permutation
drawn from `seed`, the same for every image.
"""
function block_shuffle!(images::Array{Float32,4}, block::Integer, seed::Integer)
    w, h, c, n = size(images)
    GC.@preserve images begin
        check(ccall((:tl_block_shuffle, libtransferlens), UInt32,
                    (Ptr{Float32}, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64),
                    images, n, c, h, w, UInt64(block), UInt64(seed)))
    end
    return images
end

"""
    prediction_agreement(a, b, truth) -> (counts, category)

Agreement of two models' predicted labels with the true ones: `counts[1:5]` = both right, only
A right, only B right, both wrong with the same label, both wrong with different labels;
`category[k]` in 0..4 for each sample, in that order.
"""
function prediction_agreement(a::AbstractVector{<:Integer}, b::AbstractVector{<:Integer},
                              truth::AbstractVector{<:Integer})
    n = length(truth)
    (length(a) == n && length(b) == n) ||
        throw(TransferLensError(STATUS_SHAPE_MISMATCH, "label vectors of lengths $(length(a)), $(length(b)), $n"))
    av, bv, tv = Vector{UInt32}(a), Vector{UInt32}(b), Vector{UInt32}(truth)
    counts = zeros(UInt64, 5)
    cat = zeros(UInt8, max(n, 1))
    GC.@preserve av bv tv counts cat begin
        check(ccall((:tl_prediction_agreement, libtransferlens), UInt32,
                    (Ptr{UInt32}, Ptr{UInt32}, Ptr{UInt32}, Csize_t, Ptr{UInt64}, Ptr{UInt8}),
                    av, bv, tv, n, counts, cat))
    end
    return (counts = Int.(counts), category = Int.(cat[1:n]))
end
