# Permutation alignment and layer-wise connectivity (docs/align.md; included by TransferLens.jl).

"""
    PermSpec(set::Params)
    PermSpec(json::AbstractString)

A permutation spec: which tensor axes share one permutation of hidden units. Inferred from a set
(the built-in CNN from its metadata, else a chain of dense layers, which covers the built-in MLP)
or read from its JSON form. Free with `close` (a finalizer does it otherwise).
"""
mutable struct PermSpec
    ptr::Ptr{Cvoid}
    function PermSpec(ptr::Ptr{Cvoid})
        s = new(ptr)
        finalizer(close, s)
        return s
    end
end

function PermSpec(set::Params)
    out = Ref{Ptr{Cvoid}}(C_NULL)
    GC.@preserve set check(ccall((:tl_perm_spec_infer, libtransferlens), UInt32, (Ptr{Cvoid}, Ref{Ptr{Cvoid}}),
                                 handle(set), out))
    return PermSpec(out[])
end

function PermSpec(json::AbstractString)
    out = Ref{Ptr{Cvoid}}(C_NULL)
    check(ccall((:tl_perm_spec_from_json, libtransferlens), UInt32, (Cstring, Ref{Ptr{Cvoid}}), json, out))
    return PermSpec(out[])
end

function Base.close(s::PermSpec)
    if s.ptr != C_NULL
        ccall((:tl_perm_spec_destroy, libtransferlens), Cvoid, (Ptr{Cvoid},), s.ptr)
        s.ptr = C_NULL
    end
    return nothing
end

handle(s::PermSpec) =
    s.ptr == C_NULL ? throw(TransferLensError(STATUS_NULL_ARGUMENT, "use of a closed PermSpec")) : s.ptr

"""The number of permutation groups."""
group_count(s::PermSpec) =
    GC.@preserve s Int(ccall((:tl_perm_spec_group_count, libtransferlens), Csize_t, (Ptr{Cvoid},), handle(s)))

"""The units of each group, in order."""
function group_sizes(s::PermSpec)
    out = Ref{UInt64}(0)
    return map(1:group_count(s)) do g
        GC.@preserve s check(ccall((:tl_perm_spec_group_size, libtransferlens), UInt32,
                                   (Ptr{Cvoid}, Csize_t, Ref{UInt64}), handle(s), g - 1, out))
        Int(out[])
    end
end

"""Checks the spec against a set (every tensor present, sizes match); throws naming the tensor."""
check_spec(s::PermSpec, set::Params) =
    GC.@preserve s set check(ccall((:tl_perm_spec_check, libtransferlens), UInt32, (Ptr{Cvoid}, Ptr{Cvoid}),
                                   handle(s), handle(set)))

units(s::PermSpec) = GC.@preserve s Int(ccall((:tl_perm_spec_units, libtransferlens), Csize_t, (Ptr{Cvoid},), handle(s)))

# The flat 0-based permutation array of the C ABI as one 1-based vector per group, and back.
function split_perms(s::PermSpec, flat::Vector{UInt64})
    out = Vector{Vector{Int}}()
    at = 0
    for n in group_sizes(s)
        push!(out, Int.(flat[at+1:at+n]) .+ 1)
        at += n
    end
    return out
end
join_perms(perms::AbstractVector) = UInt64[p - 1 for g in perms for p in g]

"""
    AlignOptions(; seed = 0, max_passes = 100)

Options of [`align_weights`](@ref) (mirrors `tl_align_options`). `size` is always
`sizeof(AlignOptions)`.
"""
struct AlignOptions
    size::Csize_t
    seed::UInt64
    max_passes::UInt64
end

function AlignOptions(; kwargs...)
    d = ccall((:tl_align_options_default, libtransferlens), AlignOptions, ())
    for k in keys(kwargs)
        k in (:seed, :max_passes) || throw(TransferLensError(STATUS_INVALID_ARGUMENT, "AlignOptions has no option $k"))
    end
    return AlignOptions(Csize_t(sizeof(AlignOptions)), UInt64(get(kwargs, :seed, d.seed)),
                        UInt64(get(kwargs, :max_passes, d.max_passes)))
end

"""
    align_weights(spec, a, b; opts = AlignOptions()) -> (perms, passes, converged)

Weight matching: per group, the 1-based permutation of B's units that best matches A's weights
(`perms[g][i]`: the unit of B that becomes unit i), the passes run and whether the last one
changed nothing.
"""
function align_weights(s::PermSpec, a::Params, b::Params; opts::AlignOptions = AlignOptions())
    flat = Vector{UInt64}(undef, max(units(s), 1))
    passes = Ref{UInt64}(0)
    converged = Ref{Int32}(0)
    GC.@preserve s a b flat check(ccall((:tl_align_weights, libtransferlens), UInt32,
                                        (Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Cvoid}, Ref{AlignOptions}, Ptr{UInt64}, Csize_t,
                                         Ref{UInt64}, Ref{Int32}),
                                        handle(s), handle(a), handle(b), opts, flat, units(s), passes, converged))
    return split_perms(s, flat[1:units(s)]), Int(passes[]), converged[] == 1
end

"""
    align_activations(ctx, spec, acts_a, acts_b) -> perms

Activation matching: `acts_a[g]` and `acts_b[g]` are group g's activations on the same inputs,
observations × units matrices (a conv: one row per input and pixel). Returns the 1-based
permutation of B's units per group.
"""
function align_activations(ctx::Context, s::PermSpec, acts_a::AbstractVector, acts_b::AbstractVector)
    va = [tl_matrix(m) for m in acts_a]
    vb = [tl_matrix(m) for m in acts_b]
    length(va) == length(vb) || throw(TransferLensError(STATUS_SHAPE_MISMATCH, "acts_a and acts_b differ in length"))
    ma = TLMatrix[v[1] for v in va]
    mb = TLMatrix[v[1] for v in vb]
    roots = [[v[2] for v in va]; [v[2] for v in vb]]
    flat = Vector{UInt64}(undef, max(units(s), 1))
    GC.@preserve ctx s roots ma mb flat check(ccall((:tl_align_activations, libtransferlens), UInt32,
                                                    (Ptr{Cvoid}, Ptr{Cvoid}, Ptr{TLMatrix}, Ptr{TLMatrix}, Csize_t,
                                                     Ptr{UInt64}, Csize_t),
                                                    handle(ctx), handle(s), ma, mb, length(ma), flat, units(s)))
    return split_perms(s, flat[1:units(s)])
end

"""
    align_apply(spec, b, perms) -> Params

B rewritten in the unit order `perms` (1-based, per group, as [`align_weights`](@ref) returns
them): a new set that computes what B computes.
"""
function align_apply(s::PermSpec, b::Params, perms::AbstractVector)
    flat = join_perms(perms)
    out = Ref{Ptr{Cvoid}}(C_NULL)
    GC.@preserve s b flat check(ccall((:tl_align_apply, libtransferlens), UInt32,
                                      (Ptr{Cvoid}, Ptr{Cvoid}, Ptr{UInt64}, Csize_t, Ref{Ptr{Cvoid}}),
                                      handle(s), handle(b), flat, length(flat), out))
    return Params(out[])
end

"""
    layerwise_curve(ctx, ev, a, b, live, lambdas, modules::UnitRange) -> Vector{Metrics}

The layer-wise curve: A with the modules in `modules` (1-based, A's modules in order; one module
`i:i`, the first k `1:k`, the last k `n-k+1:n`) at (1 − λ) A + λ B and every other weight held
at A. `live` receives each point (see [`interpolation_curve`](@ref)).
"""
function layerwise_curve(ctx::Context, ev::Evaluator, a::Params, b::Params, live::Params,
                         lambdas::AbstractVector{<:Real}, modules::UnitRange{<:Integer})
    l = Vector{Float64}(lambdas)
    out = per_module_buffer(Metrics, length(l))
    GC.@preserve ctx ev a b live l out begin
        check(ccall((:tl_layerwise_curve, libtransferlens), UInt32,
                    (Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Float64}, Csize_t, Csize_t,
                     Csize_t, Ptr{Metrics}),
                    handle(ctx), handle(ev), handle(a), handle(b), handle(live), l, length(l),
                    max(first(modules) - 1, 0), length(modules), out))
    end
    return out[1:length(l)]
end
