# How far to trust a CKA value: jackknife or bootstrap interval, permutation null and the most influential
# samples (tl_cka_statistics; docs/analyses.md, section 1, "Uncertainty").

"""
    CkaStatsOptions(; kwargs...)

Options of [`cka_statistics`](@ref), mirroring `tl_cka_stats_options`: `estimator` (BIASED),
`resamples` (1000; 0: no interval; the bootstrap's resamples, which the jackknife does not
draw), `level` (0.95), `blocks` (0: automatic), `permutations` (0: no null), `seed` (0) and
`interval` (`INTERVAL_JACKKNIFE`, or the bootstrap's `INTERVAL_PERCENTILE` or `INTERVAL_BCA`).
`size` is always `sizeof(CkaStatsOptions)`.
"""
struct CkaStatsOptions
    size::Csize_t
    estimator::UInt32
    resamples::UInt64
    level::Float64
    blocks::UInt64
    permutations::UInt64
    seed::UInt64
    interval::UInt32
end

@enum CkaInterval::UInt32 INTERVAL_PERCENTILE = 0 INTERVAL_BCA = 1 INTERVAL_JACKKNIFE = 2

function CkaStatsOptions(; kwargs...)
    d = ccall((:tl_cka_stats_options_default, libtransferlens), CkaStatsOptions, ())
    vals = Any[]
    for f in fieldnames(CkaStatsOptions)
        if f == :size
            push!(vals, Csize_t(sizeof(CkaStatsOptions)))
        elseif haskey(kwargs, f)
            v = kwargs[f]
            T = fieldtype(CkaStatsOptions, f)
            push!(vals, v isa Enum ? T(Integer(v)) : convert(T, v))
        else
            push!(vals, getfield(d, f))
        end
    end
    for k in keys(kwargs)
        (k in fieldnames(CkaStatsOptions) && k != :size) ||
            throw(TransferLensError(STATUS_INVALID_ARGUMENT, "CkaStatsOptions has no option $k"))
    end
    return CkaStatsOptions(vals...)
end

"""The result of [`cka_statistics`](@ref), mirroring `tl_cka_stats_report`."""
struct CkaStatsReport
    size::Csize_t
    cka::Float64
    lower::Float64
    upper::Float64
    std_error::Float64
    degenerate_resamples::UInt64
    blocks::UInt64
    block_size::UInt64
    p_value::Float64
    null_mean::Float64
    null_std::Float64
    top_written::UInt64
    bias_correction::Float64  # NaN for the jackknife interval
    acceleration::Float64  # NaN for a percentile or jackknife interval (computed for BCa only)
    jackknife_estimate::Float64  # the jackknife interval's centre; NaN for a bootstrap interval
end

"""
    cka_statistics(ctx, X, Y; top = 0, kwargs...) -> (report, samples, deltas)

CKA of `X` and `Y` (samples x features, host memory) with an interval (the jackknife's unless
`interval` names a bootstrap one), a
permutation null and the `top` samples whose removal changes CKA most (1-based row indices, and
CKA without the sample minus CKA of all, largest change first). Keywords as
[`CkaStatsOptions`](@ref).
"""
function cka_statistics(ctx::Context, X, Y; top::Integer = 0, kwargs...)
    opts = CkaStatsOptions(; kwargs...)
    mx, rx = tl_matrix(X)
    my, ry = tl_matrix(Y)
    out = Ref(sized(CkaStatsReport, sizeof(CkaStatsReport)))
    samples = zeros(UInt64, top)
    deltas = zeros(Float64, top)
    GC.@preserve ctx rx ry samples deltas begin
        check(ccall((:tl_cka_statistics, libtransferlens), UInt32,
                    (Ptr{Cvoid}, Ref{TLMatrix}, Ref{TLMatrix}, Ref{CkaStatsOptions}, Ref{CkaStatsReport},
                     Ptr{UInt64}, Ptr{Float64}, UInt64),
                    handle(ctx), mx, my, opts, out, top == 0 ? C_NULL : pointer(samples),
                    top == 0 ? C_NULL : pointer(deltas), UInt64(top)))
    end
    n = Int(out[].top_written)
    return out[], Int.(samples[1:n]) .+ 1, deltas[1:n]
end
