"""
    TransferLens

Julia binding of transferlens (linear CKA, single, layer by layer and streaming with all-reduce
support; parameter sets: per-module distances, norms, interpolation and rewinding, see
[`Params`](@ref); evaluators from Julia functions or the built-in MLP, interpolation curves,
barriers, module and network criticality, rewind curves, block shuffle and prediction
agreement, see [`Evaluator`](@ref)) over its C ABI, `include/transferlens.h`.

# Matrices: which way round

The library reads row-major matrices with rows = samples and columns = features. Julia arrays
are column-major, so:

- `transpose(H)`, `H'` (real `H`) and `PermutedDimsArray(H, (2, 1))`, where `H` is a
  **features × samples** array (one column per sample: the layout of Flux and Lux activations),
  are passed **without a copy**: `H`'s memory is exactly the row-major samples × features
  matrix. `H` may be a `Matrix` or a strided view with unit stride down its columns, e.g. a
  batch `view(H, :, 1:32)`.
- Any other matrix, a plain `Matrix` included, is read as **samples × features** (rows are
  samples, the statistics convention) and **copied** into row-major order for the call.

Both spellings of the same data give the same answer; the copy only costs time. Element types:
`Float32`, `Float64`, `Float16`; bfloat16 data as `UInt16` bit patterns wrapped in
[`BFloat16Bits`](@ref). Anything else is a `TransferLensError` (`STATUS_UNSUPPORTED_DTYPE`).

# Errors and handles

Failures throw [`TransferLensError`](@ref) with the status and the library's message.
[`Context`](@ref), [`CkaAccumulator`](@ref) and [`Params`](@ref) hold C handles, freed by `close` or, failing
that, by a finalizer.

# The library

`TransferLens.libtransferlens` is the path of `libtransferlens.so`: the environment variable
`TRANSFERLENS_LIB` when it is set as the package loads, else `target/release/libtransferlens.so`
of the repository holding this package (build it with `cargo build --release --lib`).
"""
module TransferLens

using LinearAlgebra: Adjoint, Transpose

export Context, CkaAccumulator, CkaState, TransferLensError, BFloat16Bits
export Status, Backend, DType, Estimator
export BACKEND_AUTO, BACKEND_CPU, BACKEND_CUDA, BIASED, DEBIASED
export version, abi_version, status_name, backend
export cka_linear, cka_matrix, update!, merge!, result, state_size, export_state, rebase!, import_state!,
       set_widths!
export Params, ModuleGeometry, Grouping, Unmatched, GROUP_FIRST, GROUP_DEPTH, GROUP_PREFIXES, GROUP_TENSOR,
       UNMATCHED_OWN_GROUP, UNMATCHED_ERROR
export CkaStatsOptions, CkaStatsReport, cka_statistics, CkaInterval, INTERVAL_BCA, INTERVAL_PERCENTILE,
       INTERVAL_JACKKNIFE
export load_params, load_checkpoint, save_params, wrap_params, set_grouping!, module_count, module_name, module_names, find_module,
       tensor_count, tensor_data, distance, norms, compare, interpolate!, interpolate_module!, rewind!
export Evaluator, Metrics, Metric, METRIC_LOSS, METRIC_ERROR, METRIC_ACCURACY, BarrierResult, finish,
       CriticalityOptions, Criticality, NetworkSummary, CriticalityReport, NetworkReport, BoundReport
export set_callback_error, mlp_init, evaluate, interpolation_curve, barrier, module_criticality,
       network_criticality, pac_bayes_bound, module_criticality_report, network_criticality_report,
       pac_bayes_report, rewind_curve, block_shuffle!, prediction_agreement
export Cnn, TrainOptions, LrSchedule, LR_CONSTANT, LR_STEP, LR_COSINE, classes, input_shape, module_width, cnn_init,
       train!, mlp_train!, activations
export PermSpec, AlignOptions, group_count, group_sizes, check_spec, align_weights, align_activations, align_apply,
       layerwise_curve

const libtransferlens = get(ENV, "TRANSFERLENS_LIB",
                            normpath(joinpath(@__DIR__, "..", "..", "..", "..", "target", "release",
                                              "libtransferlens.so")))

# The C enums; their values are fixed by the C ABI. They cross ccall as UInt32.
@enum Status::UInt32 begin
    STATUS_OK = 0
    STATUS_NULL_ARGUMENT = 1
    STATUS_INVALID_ARGUMENT = 2
    STATUS_SHAPE_MISMATCH = 3
    STATUS_UNSUPPORTED_DTYPE = 4
    STATUS_DEGENERATE_INPUT = 5
    STATUS_NON_FINITE = 6
    STATUS_IO = 7
    STATUS_FORMAT = 8
    STATUS_NOT_FOUND = 9
    STATUS_DEVICE_UNAVAILABLE = 10
    STATUS_DEVICE = 11
    STATUS_CALLBACK = 12
    STATUS_PANIC = 13
    STATUS_OUT_OF_MEMORY = 14
end
@enum Backend::UInt32 BACKEND_AUTO = 0 BACKEND_CPU = 1 BACKEND_CUDA = 2
@enum DType::UInt32 DTYPE_F32 = 0 DTYPE_F64 = 1 DTYPE_F16 = 2 DTYPE_BF16 = 3
@enum Estimator::UInt32 BIASED = 0 DEBIASED = 1
@enum Grouping::UInt32 GROUP_FIRST = 0 GROUP_DEPTH = 1 GROUP_PREFIXES = 2 GROUP_TENSOR = 3
@enum Unmatched::UInt32 UNMATCHED_OWN_GROUP = 0 UNMATCHED_ERROR = 1

# ---------------------------------------------------------------------------------------------
# Basics

"""The linked library's version, "MAJOR.MINOR.PATCH"."""
version() = unsafe_string(ccall((:tl_version, libtransferlens), Cstring, ()))

"""The linked library's ABI version."""
abi_version() = ccall((:tl_abi_version, libtransferlens), UInt32, ())

"""The C name of a status, e.g. "TL_STATUS_DEGENERATE_INPUT" ("TL_STATUS_UNKNOWN" for no status)."""
status_name(s::Union{Status,Integer}) =
    unsafe_string(ccall((:tl_status_name, libtransferlens), Cstring, (UInt32,), UInt32(s)))

"""A failed call: the status and the library's message."""
struct TransferLensError <: Exception
    status::Status
    message::String
end

Base.showerror(io::IO, e::TransferLensError) = print(io, "TransferLensError: ", status_name(e.status), ": ", e.message)

# Throws for a failed status. The library keeps the message per OS thread; no task switch can
# happen between the failed ccall and this one, so the message is the failure's own.
function check(status::UInt32)
    status == 0 && return nothing
    message = unsafe_string(ccall((:tl_last_error_message, libtransferlens), Cstring, ()))
    throw(TransferLensError(Status(status), message))
end

# ---------------------------------------------------------------------------------------------
# Matrices

# tl_matrix, field for field (tests/julia_header_check.rs compares it with the header).
struct TLMatrix
    data::Ptr{Cvoid}
    dtype::UInt32
    rows::UInt64
    cols::UInt64
    row_stride::UInt64
    device::Int32
end

"""
    BFloat16Bits(A)

bfloat16 data given as its `UInt16` bit patterns; `A` follows the same layout rules as any
other matrix (see the module docs), e.g. `BFloat16Bits(transpose(H))` for features × samples `H`.
"""
struct BFloat16Bits{A<:AbstractArray{UInt16}}
    data::A
end

dtype_of(::Type{Float32}) = DTYPE_F32
dtype_of(::Type{Float64}) = DTYPE_F64
dtype_of(::Type{Float16}) = DTYPE_F16
dtype_of(::Type{T}) where {T} =
    throw(TransferLensError(STATUS_UNSUPPORTED_DTYPE,
                            "element type $T: use Float32, Float64, Float16, or BFloat16Bits for bfloat16 bits"))

# A samples × features matrix whose parent is a features × samples column-major array.
const RowMajorView{T,P} = Union{Transpose{T,P},Adjoint{T,P},PermutedDimsArray{T,2,(2, 1),(2, 1),P}}

# (root, rows, cols, row_stride): memory holding the matrix row-major, to be kept alive for the
# call, and its shape. No copy when the parent's columns are contiguous.
function row_major(A::RowMajorView{T,P}) where {T,P<:StridedMatrix}
    p = parent(A)
    if T <: Real && stride(p, 1) == 1
        return p, size(A, 1), size(A, 2), max(stride(p, 2), size(A, 2))
    end
    return row_major_copy(A)
end
row_major(A::AbstractMatrix) = row_major_copy(A)

# Rows of A are samples: copy into a features × samples Matrix, whose memory is row-major A.
function row_major_copy(A::AbstractMatrix{T}) where {T}
    n, f = size(A)
    p = Matrix{T}(undef, f, n)
    for s in 1:n, j in 1:f
        p[j, s] = A[s, j]
    end
    return p, n, f, f
end

function tl_matrix(A::AbstractMatrix)
    root, rows, cols, row_stride = row_major(A)
    dtype = dtype_of(eltype(root))
    return TLMatrix(pointer(root), UInt32(dtype), rows, cols, row_stride, Int32(-1)), root
end

function tl_matrix(B::BFloat16Bits)
    root, rows, cols, row_stride = row_major(B.data)
    return TLMatrix(pointer(root), UInt32(DTYPE_BF16), rows, cols, row_stride, Int32(-1)), root
end

function tl_matrices(ms::AbstractVector)
    views = [tl_matrix(m) for m in ms]
    return TLMatrix[v[1] for v in views], Any[v[2] for v in views]
end

# The C function writes out[i * ny + j]; Julia wants an nx × ny matrix.
from_row_major(flat::Vector{Float64}, nx::Integer, ny::Integer) = permutedims(reshape(flat, ny, nx))

# ---------------------------------------------------------------------------------------------
# Context

"""
    Context(backend = BACKEND_AUTO, device = 0)

The backend analyses run on. `BACKEND_AUTO` picks CUDA when a driver and a device are present,
else the CPU; `BACKEND_CUDA` without them throws `STATUS_DEVICE_UNAVAILABLE`. A CPU context may
be shared by threads. Free it with `close` (a finalizer does it otherwise).
"""
mutable struct Context
    ptr::Ptr{Cvoid}
    function Context(backend::Backend = BACKEND_AUTO, device::Integer = 0)
        out = Ref{Ptr{Cvoid}}(C_NULL)
        check(ccall((:tl_context_create, libtransferlens), UInt32, (UInt32, Int32, Ref{Ptr{Cvoid}}),
                    UInt32(backend), Int32(device), out))
        ctx = new(out[])
        finalizer(close, ctx)
        return ctx
    end
end

function Base.close(ctx::Context)
    if ctx.ptr != C_NULL
        ccall((:tl_context_destroy, libtransferlens), Cvoid, (Ptr{Cvoid},), ctx.ptr)
        ctx.ptr = C_NULL
    end
    return nothing
end

handle(ctx::Context) =
    ctx.ptr == C_NULL ? throw(TransferLensError(STATUS_NULL_ARGUMENT, "use of a closed Context")) : ctx.ptr

"""The resolved backend of a context: `BACKEND_CPU` or `BACKEND_CUDA`."""
function backend(ctx::Context)
    out = Ref{UInt32}(0)
    GC.@preserve ctx begin
        check(ccall((:tl_context_backend, libtransferlens), UInt32, (Ptr{Cvoid}, Ref{UInt32}), handle(ctx), out))
    end
    return Backend(out[])
end

"""
    cka_linear(ctx, X, Y, estimator) -> Float64

Linear CKA of `X` and `Y`, samples × features each (see the module docs for the layouts),
with `BIASED` or `DEBIASED`.
"""
function cka_linear(ctx::Context, X, Y, estimator::Estimator)
    mx, rx = tl_matrix(X)
    my, ry = tl_matrix(Y)
    out = Ref{Float64}(0.0)
    GC.@preserve ctx rx ry begin
        check(ccall((:tl_cka_linear, libtransferlens), UInt32,
                    (Ptr{Cvoid}, Ref{TLMatrix}, Ref{TLMatrix}, UInt32, Ref{Float64}),
                    handle(ctx), mx, my, UInt32(estimator), out))
    end
    return out[]
end

"""
    cka_matrix(ctx, xs, ys, estimator) -> Matrix{Float64}

CKA of every pair of layers: `out[i, j] = CKA(xs[i], ys[j])`. Each layer's Gram is formed once.
"""
function cka_matrix(ctx::Context, xs::AbstractVector, ys::AbstractVector, estimator::Estimator)
    mx, rx = tl_matrices(xs)
    my, ry = tl_matrices(ys)
    flat = zeros(Float64, length(xs) * length(ys))
    GC.@preserve ctx rx ry mx my flat begin
        check(ccall((:tl_cka_matrix, libtransferlens), UInt32,
                    (Ptr{Cvoid}, Ptr{TLMatrix}, Csize_t, Ptr{TLMatrix}, Csize_t, UInt32, Ptr{Float64}),
                    handle(ctx), mx, length(mx), my, length(my), UInt32(estimator), flat))
    end
    return from_row_major(flat, length(xs), length(ys))
end

# ---------------------------------------------------------------------------------------------
# Streaming accumulator

"""
    CkaAccumulator(ctx, nx, ny, estimator)

Exact streaming CKA of `nx` × `ny` layer pairs: batches fed with [`update!`](@ref) give the
value of the concatenated data. It keeps its own reference to the backend (`ctx` may be closed
first). All-reduce across processes: every process updates; one broadcasts its
`export_state(acc).shift`; every process calls `rebase!` with it; the moments are summed (MPI);
every process calls `import_state!` with the shift and the summed moments (`set_widths!` first
in a process that saw no data). Not to be used from two threads at once.
"""
mutable struct CkaAccumulator
    ptr::Ptr{Cvoid}
    nx::Int
    ny::Int
    function CkaAccumulator(ctx::Context, nx::Integer, ny::Integer, estimator::Estimator)
        (nx < 0 || ny < 0) && throw(TransferLensError(STATUS_INVALID_ARGUMENT, "negative layer count"))
        out = Ref{Ptr{Cvoid}}(C_NULL)
        GC.@preserve ctx begin
            check(ccall((:tl_cka_accumulator_create, libtransferlens), UInt32,
                        (Ptr{Cvoid}, Csize_t, Csize_t, UInt32, Ref{Ptr{Cvoid}}),
                        handle(ctx), nx, ny, UInt32(estimator), out))
        end
        acc = new(out[], nx, ny)
        finalizer(close, acc)
        return acc
    end
end

"""An exported accumulator state: `moments[1]` is the sample count."""
struct CkaState
    shift::Vector{Float64}
    moments::Vector{Float64}
end

function Base.close(acc::CkaAccumulator)
    if acc.ptr != C_NULL
        ccall((:tl_cka_accumulator_destroy, libtransferlens), Cvoid, (Ptr{Cvoid},), acc.ptr)
        acc.ptr = C_NULL
    end
    return nothing
end

handle(acc::CkaAccumulator) =
    acc.ptr == C_NULL ? throw(TransferLensError(STATUS_NULL_ARGUMENT, "use of a closed CkaAccumulator")) : acc.ptr

"""Adds a batch: `nx` x layers and `ny` y layers, all with the same samples."""
function update!(acc::CkaAccumulator, xs::AbstractVector, ys::AbstractVector)
    # The C function reads exactly nx and ny matrices: check the counts here.
    if length(xs) != acc.nx || length(ys) != acc.ny
        throw(TransferLensError(STATUS_SHAPE_MISMATCH,
                                "update! got $(length(xs)) x and $(length(ys)) y layers; " *
                                "the accumulator has $(acc.nx) and $(acc.ny)"))
    end
    mx, rx = tl_matrices(xs)
    my, ry = tl_matrices(ys)
    GC.@preserve acc rx ry mx my begin
        check(ccall((:tl_cka_accumulator_update, libtransferlens), UInt32, (Ptr{Cvoid}, Ptr{TLMatrix}, Ptr{TLMatrix}),
                    handle(acc), mx, my))
    end
    return acc
end

"""Adds the state of `from` to `into` (same layer and feature counts)."""
function merge!(into::CkaAccumulator, from::CkaAccumulator)
    GC.@preserve into from begin
        check(ccall((:tl_cka_accumulator_merge, libtransferlens), UInt32, (Ptr{Cvoid}, Ptr{Cvoid}), handle(into),
                    handle(from)))
    end
    return into
end

"""The CKA of every pair from the data so far: an `nx` × `ny` matrix."""
function result(acc::CkaAccumulator)
    flat = zeros(Float64, acc.nx * acc.ny)
    GC.@preserve acc flat begin
        check(ccall((:tl_cka_accumulator_result, libtransferlens), UInt32, (Ptr{Cvoid}, Ptr{Float64}), handle(acc),
                    flat))
    end
    return from_row_major(flat, acc.nx, acc.ny)
end

"""`(shift_len, moments_len)` of the exported state; both 0 until the feature counts are fixed."""
function state_size(acc::CkaAccumulator)
    shift = Ref{Csize_t}(0)
    moments = Ref{Csize_t}(0)
    GC.@preserve acc begin
        check(ccall((:tl_cka_accumulator_state_size, libtransferlens), UInt32,
                    (Ptr{Cvoid}, Ref{Csize_t}, Ref{Csize_t}), handle(acc), shift, moments))
    end
    return Int(shift[]), Int(moments[])
end

"""The accumulator's state as a [`CkaState`](@ref)."""
function export_state(acc::CkaAccumulator)
    ls, lm = state_size(acc)
    st = CkaState(zeros(Float64, ls), zeros(Float64, lm))
    GC.@preserve acc st begin
        check(ccall((:tl_cka_accumulator_export, libtransferlens), UInt32,
                    (Ptr{Cvoid}, Ptr{Float64}, Csize_t, Ptr{Float64}, Csize_t),
                    handle(acc), st.shift, ls, st.moments, lm))
    end
    return st
end

"""Re-expresses the moments relative to `shift` (another process's exported shift)."""
function rebase!(acc::CkaAccumulator, shift::AbstractVector{<:Real})
    s = Vector{Float64}(shift)
    GC.@preserve acc s begin
        check(ccall((:tl_cka_accumulator_rebase, libtransferlens), UInt32, (Ptr{Cvoid}, Ptr{Float64}, Csize_t),
                    handle(acc), s, length(s)))
    end
    return acc
end

"""Replaces the state with an exported (possibly all-reduced) one."""
function import_state!(acc::CkaAccumulator, st::CkaState)
    GC.@preserve acc st begin
        check(ccall((:tl_cka_accumulator_import, libtransferlens), UInt32,
                    (Ptr{Cvoid}, Ptr{Float64}, Csize_t, Ptr{Float64}, Csize_t),
                    handle(acc), st.shift, length(st.shift), st.moments, length(st.moments)))
    end
    return acc
end

"""Fixes the feature counts (`nx` x widths, then `ny` y widths) before any data."""
function set_widths!(acc::CkaAccumulator, widths::AbstractVector{<:Integer})
    w = Vector{UInt64}(widths)
    GC.@preserve acc w begin
        check(ccall((:tl_cka_accumulator_set_widths, libtransferlens), UInt32, (Ptr{Cvoid}, Ptr{UInt64}, Csize_t),
                    handle(acc), w, length(w)))
    end
    return acc
end

# ---------------------------------------------------------------------------------------------
# Parameter sets

# tl_tensor, field for field (tests/julia_header_check.rs compares it with the header).
struct TLTensor
    name::Ptr{UInt8}
    data::Ptr{Cvoid}
    dtype::UInt32
    shape::Ptr{UInt64}
    ndim::Csize_t
    device::Int32
end

"""
    ModuleGeometry

One module of sets `a` and `b` compared (mirrors `tl_module_geometry`): `numel` elements,
`distance` ‖a − b‖, `norm_a` ‖a‖, `norm_b` ‖b‖, `relative` ‖a − b‖ / ‖a‖, `cosine`
⟨a, b⟩ / (‖a‖ ‖b‖).
"""
struct ModuleGeometry
    numel::UInt64
    distance::Float64
    norm_a::Float64
    norm_b::Float64
    relative::Float64
    cosine::Float64
end

"""
    Params

A parameter set: named tensors grouped into modules, from [`load_params`](@ref) (a safetensors
file), [`wrap_params`](@ref) (Julia arrays, no copy) or `copy` (a deep copy to write
interpolations into). Modules are numbered from 1. Free it with `close` (a finalizer does it
otherwise). Several threads may read a set at once; a call that writes into it needs it alone.
"""
mutable struct Params
    ptr::Ptr{Cvoid}
    keep::Vector{Any} # the wrapped arrays, kept alive as long as the set
    function Params(ptr::Ptr{Cvoid}, keep::Vector{Any} = Any[])
        p = new(ptr, keep)
        finalizer(close, p)
        return p
    end
end

function Base.close(p::Params)
    if p.ptr != C_NULL
        ccall((:tl_params_destroy, libtransferlens), Cvoid, (Ptr{Cvoid},), p.ptr)
        p.ptr = C_NULL
        empty!(p.keep)
    end
    return nothing
end

handle(p::Params) = p.ptr == C_NULL ? throw(TransferLensError(STATUS_NULL_ARGUMENT, "use of a closed Params")) : p.ptr

"""
    load_params(ctx, path; mapped=false) -> Params

Loads a safetensors file into memory the set owns: later changes to the file do not reach it.
`mapped=true` maps the file instead (copy-on-write, read when used); the file must then stay
unchanged while the set lives (a truncated file stops the process). A missing file or a path
that is not a regular file is `STATUS_IO`, a malformed one `STATUS_FORMAT`. Modules: the first
name component.
"""
function load_params(ctx::Context, path::AbstractString; mapped::Bool=false)
    out = Ref{Ptr{Cvoid}}(C_NULL)
    GC.@preserve ctx begin
        if mapped
            check(ccall((:tl_params_load_mapped, libtransferlens), UInt32,
                        (Ptr{Cvoid}, Cstring, Ref{Ptr{Cvoid}}), handle(ctx), path, out))
        else
            check(ccall((:tl_params_load, libtransferlens), UInt32, (Ptr{Cvoid}, Cstring, Ref{Ptr{Cvoid}}),
                        handle(ctx), path, out))
        end
    end
    return Params(out[])
end

"""
    load_checkpoint(ctx, path) -> Params

Loads a checkpoint as it is kept: a safetensors file, a folder holding `model.safetensors`, or a
sharded checkpoint (its folder or its `model.safetensors.index.json`), into memory the set owns.
The shards are checked against the index (`STATUS_FORMAT` naming the tensor at fault); the files
must not be truncated while the call reads them.
"""
function load_checkpoint(ctx::Context, path::AbstractString)
    out = Ref{Ptr{Cvoid}}(C_NULL)
    GC.@preserve ctx begin
        check(ccall((:tl_params_load_checkpoint, libtransferlens), UInt32, (Ptr{Cvoid}, Cstring, Ref{Ptr{Cvoid}}),
                    handle(ctx), path, out))
    end
    return Params(out[])
end

"""Writes the set as a safetensors file, atomically."""
function save_params(p::Params, path::AbstractString)
    GC.@preserve p begin
        check(ccall((:tl_params_save, libtransferlens), UInt32, (Ptr{Cvoid}, Cstring), handle(p), path))
    end
    return path
end

tensor_root(A::Array) = A, dtype_of(eltype(A))
tensor_root(B::BFloat16Bits{<:Array}) = B.data, DTYPE_BF16
tensor_root(A) = throw(TransferLensError(STATUS_UNSUPPORTED_DTYPE,
                                         "a wrapped tensor is an Array of Float32, Float64, Float16 or " *
                                         "BFloat16Bits(Array{UInt16}), not $(typeof(A))"))

"""
    wrap_params(ctx, ["conv1.weight" => W1, "fc.bias" => b, ...]) -> Params

A set over the arrays' memory, without a copy: interpolations written into the set land in the
arrays, and the set sees what Julia writes into them. A Julia array of size `(d1, …, dn)` is
the C-order (PyTorch) tensor of shape `[dn, …, d1]`: the same memory, read the other way round,
so a PyTorch `[out, in]` weight is an `in × out` Julia matrix. Element types: `Float32`,
`Float64`, `Float16`; bfloat16 bits as `BFloat16Bits(A::Array{UInt16})`. The arrays must not
overlap; the set keeps them alive.
"""
function wrap_params(ctx::Context, tensors::AbstractVector{<:Pair})
    names = [String(first(t)) for t in tensors]
    roots = Any[]
    shapes = Vector{UInt64}[]
    views = TLTensor[]
    out = Ref{Ptr{Cvoid}}(C_NULL)
    GC.@preserve names begin
        for (name, t) in zip(names, tensors)
            root, dtype = tensor_root(last(t))
            shape = UInt64[reverse(size(root))...]
            push!(roots, root)
            push!(shapes, shape)
            push!(views, TLTensor(pointer(name), pointer(root),
                                  UInt32(dtype), isempty(shape) ? Ptr{UInt64}(C_NULL) : pointer(shape),
                                  length(shape), Int32(-1)))
        end
        GC.@preserve ctx roots shapes views begin
            check(ccall((:tl_params_wrap, libtransferlens), UInt32, (Ptr{Cvoid}, Ptr{TLTensor}, Csize_t, Ref{Ptr{Cvoid}}),
                        handle(ctx), isempty(views) ? Ptr{TLTensor}(C_NULL) : pointer(views), length(views), out))
        end
    end
    return Params(out[], roots)
end

"""A deep copy of the set in memory it owns (same tensors, grouping, metadata): a place to write interpolations into."""
function Base.copy(p::Params)
    out = Ref{Ptr{Cvoid}}(C_NULL)
    GC.@preserve p begin
        check(ccall((:tl_params_clone, libtransferlens), UInt32, (Ptr{Cvoid}, Ref{Ptr{Cvoid}}), handle(p), out))
    end
    return Params(out[])
end

"""
    set_grouping!(p, grouping; depth = 1, prefixes = String[], unmatched = UNMATCHED_OWN_GROUP)

Regroups the weights: `GROUP_FIRST` (the first name component, the default), `GROUP_DEPTH`
(the first `depth` components), `GROUP_PREFIXES` (the longest matching prefix; `unmatched`
says what happens to a weight none matches), `GROUP_TENSOR` (every tensor its own module).
On failure the grouping is unchanged.
"""
function set_grouping!(p::Params, grouping::Grouping; depth::Integer = 1, prefixes = String[],
                       unmatched::Unmatched = UNMATCHED_OWN_GROUP)
    strs = [String(s) for s in prefixes]
    GC.@preserve p strs begin
        ptrs = Cstring[Base.unsafe_convert(Cstring, Base.cconvert(Cstring, s)) for s in strs]
        GC.@preserve ptrs begin
            check(ccall((:tl_params_set_grouping, libtransferlens), UInt32,
                        (Ptr{Cvoid}, UInt32, UInt32, Ptr{Cstring}, Csize_t, UInt32),
                        handle(p), UInt32(grouping), UInt32(depth), isempty(ptrs) ? Ptr{Cstring}(C_NULL) : pointer(ptrs),
                        length(ptrs), UInt32(unmatched)))
        end
    end
    return p
end

"""The number of modules of the set."""
module_count(p::Params) =
    GC.@preserve p Int(ccall((:tl_params_module_count, libtransferlens), Csize_t, (Ptr{Cvoid},), handle(p)))

"""The number of tensors of the set, weights and carried-through ones."""
tensor_count(p::Params) =
    GC.@preserve p Int(ccall((:tl_params_tensor_count, libtransferlens), Csize_t, (Ptr{Cvoid},), handle(p)))

"""The name of module `i` (from 1); `STATUS_NOT_FOUND` when out of range."""
function module_name(p::Params, i::Integer)
    GC.@preserve p begin
        h = handle(p)
        len = i < 1 ? Csize_t(0) :
              ccall((:tl_params_module_name, libtransferlens), Csize_t, (Ptr{Cvoid}, Csize_t, Ptr{UInt8}, Csize_t),
                    h, i - 1, C_NULL, 0)
        len == 0 && throw(TransferLensError(STATUS_NOT_FOUND, "module $i of a set of $(module_count(p)) modules"))
        buf = Vector{UInt8}(undef, len)
        ccall((:tl_params_module_name, libtransferlens), Csize_t, (Ptr{Cvoid}, Csize_t, Ptr{UInt8}, Csize_t),
              h, i - 1, buf, len)
        return String(buf[1:end-1])
    end
end

"""Every module's name, in module order."""
module_names(p::Params) = [module_name(p, i) for i in 1:module_count(p)]

"""The index (from 1) of the module called `name`; `STATUS_NOT_FOUND` when there is none."""
function find_module(p::Params, name::AbstractString)
    out = Ref{Csize_t}(0)
    GC.@preserve p begin
        check(ccall((:tl_params_find_module, libtransferlens), UInt32, (Ptr{Cvoid}, Cstring, Ref{Csize_t}),
                    handle(p), name, out))
    end
    return Int(out[]) + 1
end

const ELTYPES = Dict(DTYPE_F32 => Float32, DTYPE_F64 => Float64, DTYPE_F16 => Float16, DTYPE_BF16 => UInt16)

"""
    tensor_data(p, name) -> Vector

A copy of the weight tensor called `name`, flat in C order: `Float32`, `Float64`, `Float16`,
or `UInt16` bfloat16 bits. `STATUS_NOT_FOUND` when there is none, `STATUS_UNSUPPORTED_DTYPE`
for a carried-through (non-weight) tensor.
"""
function tensor_data(p::Params, name::AbstractString)
    dtype = Ref{UInt32}(0)
    data = Ref{Ptr{Cvoid}}(C_NULL)
    numel = Ref{UInt64}(0)
    GC.@preserve p begin
        check(ccall((:tl_params_tensor_data, libtransferlens), UInt32,
                    (Ptr{Cvoid}, Cstring, Ref{UInt32}, Ref{Ptr{Cvoid}}, Ref{UInt64}), handle(p), name, dtype, data, numel))
        T = ELTYPES[DType(dtype[])]
        return copy(unsafe_wrap(Array, Ptr{T}(data[]), Int(numel[])))
    end
end

# A per-module output of n entries (never a NULL pointer, even for n = 0).
per_module_buffer(::Type{T}, n) where {T} = Vector{T}(undef, max(n, 1))

"""
    distance(ctx, a, b) -> (per_module, total)

‖a_i − b_i‖ per module of `a`'s grouping, and over all weights. `a` and `b` must hold the same
weights (names and shapes; dtypes may differ): otherwise `STATUS_SHAPE_MISMATCH`.
"""
function distance(ctx::Context, a::Params, b::Params)
    n = module_count(a)
    per = per_module_buffer(Float64, n)
    total = Ref{Float64}(0.0)
    GC.@preserve ctx a b per begin
        check(ccall((:tl_params_distance, libtransferlens), UInt32,
                    (Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Float64}, Ref{Float64}),
                    handle(ctx), handle(a), handle(b), per, total))
    end
    return (per_module = per[1:n], total = total[])
end

"""
    norms(ctx, p) -> (per_module, total)

‖p_i‖ per module, and over all weights.
"""
function norms(ctx::Context, p::Params)
    n = module_count(p)
    per = per_module_buffer(Float64, n)
    total = Ref{Float64}(0.0)
    GC.@preserve ctx p per begin
        check(ccall((:tl_params_norms, libtransferlens), UInt32, (Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Float64}, Ref{Float64}),
                    handle(ctx), handle(p), per, total))
    end
    return (per_module = per[1:n], total = total[])
end

"""
    compare(ctx, a, b) -> (per_module::Vector{ModuleGeometry}, total::ModuleGeometry)

Distance, norms, relative distance and cosine per module of `a`, and over all weights. A module
that is all zeros in `a` or `b` is `STATUS_DEGENERATE_INPUT`.
"""
function compare(ctx::Context, a::Params, b::Params)
    n = module_count(a)
    per = per_module_buffer(ModuleGeometry, n)
    total = Ref{ModuleGeometry}()
    GC.@preserve ctx a b per begin
        check(ccall((:tl_params_compare, libtransferlens), UInt32,
                    (Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Cvoid}, Ptr{ModuleGeometry}, Ref{ModuleGeometry}),
                    handle(ctx), handle(a), handle(b), per, total))
    end
    return (per_module = per[1:n], total = total[])
end

"""
    interpolate!(out, ctx, a, b, λ) -> out

`out = (1 − λ) a + λ b` for any finite λ (outside [0, 1] it extrapolates; 0 and 1 give `a` and
`b` bit for bit). `out` holds `a`'s weights and is neither `a` nor `b`: a `copy(a)`, or a set
wrapping arrays.
"""
function interpolate!(out::Params, ctx::Context, a::Params, b::Params, lambda::Real)
    GC.@preserve ctx out a b begin
        check(ccall((:tl_params_interpolate, libtransferlens), UInt32,
                    (Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Cvoid}, Float64, Ptr{Cvoid}),
                    handle(ctx), handle(a), handle(b), Float64(lambda), handle(out)))
    end
    return out
end

module_index(i::Integer) =
    i < 1 ? throw(TransferLensError(STATUS_NOT_FOUND, "module $i (modules are numbered from 1)")) : Csize_t(i - 1)

"""
    interpolate_module!(out, ctx, a, b, λ, i) -> out

Module `i` (from 1, in `a`'s modules) at `(1 − λ) a + λ b`, every other weight at `b`.
"""
function interpolate_module!(out::Params, ctx::Context, a::Params, b::Params, lambda::Real, i::Integer)
    m = module_index(i)
    GC.@preserve ctx out a b begin
        check(ccall((:tl_params_interpolate_module, libtransferlens), UInt32,
                    (Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Cvoid}, Float64, Csize_t, Ptr{Cvoid}),
                    handle(ctx), handle(a), handle(b), Float64(lambda), m, handle(out)))
    end
    return out
end

"""
    rewind!(out, ctx, initial, final, i, α) -> out

Module `i` (from 1) at `(1 − α) initial + α final`, every other weight at `final`: α = 0
rewinds the module to its initial value, bit for bit.
"""
function rewind!(out::Params, ctx::Context, initial::Params, final::Params, i::Integer, alpha::Real)
    m = module_index(i)
    GC.@preserve ctx out initial final begin
        check(ccall((:tl_params_rewind, libtransferlens), UInt32,
                    (Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Cvoid}, Csize_t, Float64, Ptr{Cvoid}),
                    handle(ctx), handle(initial), handle(final), m, Float64(alpha), handle(out)))
    end
    return out
end

include("analysis.jl")
include("align.jl")
include("cka_stats.jl")

# ---------------------------------------------------------------------------------------------
# The built-in CNN (docs/cnn.md): the architecture from a JSON specification, initial weights,
# training, an evaluator for every analysis, and module activations for CKA. Images are a
# `w × h × c × n` `Float32` array: the memory of `n` row-major (NCHW) c × h × w images.

@enum LrSchedule::UInt32 LR_CONSTANT = 0 LR_STEP = 1 LR_COSINE = 2

"""
    TrainOptions(; kwargs...)

Options of [`train!`](@ref) and [`mlp_train!`](@ref) (mirrors `tl_train_options`): the library's
defaults (`tl_train_options_default`) with fields overridden by keyword, e.g.
`TrainOptions(epochs = 8, batch = 16, schedule = LR_COSINE)`. `step_every` and `step_factor` are
read for `LR_STEP` only. `size` is always `sizeof(TrainOptions)`.
"""
struct TrainOptions
    size::Csize_t
    epochs::UInt64
    batch::UInt64
    lr::Float64
    momentum::Float64
    weight_decay::Float64
    seed::UInt64
    schedule::UInt32
    step_every::UInt64
    step_factor::Float64
end

function TrainOptions(; kwargs...)
    d = ccall((:tl_train_options_default, libtransferlens), TrainOptions, ())
    vals = Any[]
    for f in fieldnames(TrainOptions)
        if f == :size
            push!(vals, Csize_t(sizeof(TrainOptions)))
        elseif haskey(kwargs, f)
            v = kwargs[f]
            push!(vals, v isa Enum ? UInt32(Integer(v)) : convert(fieldtype(TrainOptions, f), v))
        else
            push!(vals, getfield(d, f))
        end
    end
    for k in keys(kwargs)
        (k in fieldnames(TrainOptions) && k != :size) ||
            throw(TransferLensError(STATUS_INVALID_ARGUMENT, "TrainOptions has no option $k"))
    end
    return TrainOptions(vals...)
end

"""
    Cnn(spec_json)

A CNN's architecture (no weights) from its JSON specification; a bad specification throws with
the parser's message naming the layer and the field. Free with `close` (a finalizer does it
otherwise). Modules are numbered from 1.
"""
mutable struct Cnn
    ptr::Ptr{Cvoid}
    function Cnn(spec_json::AbstractString)
        out = Ref{Ptr{Cvoid}}(C_NULL)
        check(ccall((:tl_cnn_create, libtransferlens), UInt32, (Cstring, Ref{Ptr{Cvoid}}), spec_json, out))
        cnn = new(out[])
        finalizer(close, cnn)
        return cnn
    end
end

function Base.close(cnn::Cnn)
    if cnn.ptr != C_NULL
        ccall((:tl_cnn_destroy, libtransferlens), Cvoid, (Ptr{Cvoid},), cnn.ptr)
        cnn.ptr = C_NULL
    end
    return nothing
end

handle(cnn::Cnn) =
    cnn.ptr == C_NULL ? throw(TransferLensError(STATUS_NULL_ARGUMENT, "use of a closed Cnn")) : cnn.ptr

"""The number of classes (logits of the last layer)."""
classes(cnn::Cnn) = GC.@preserve cnn Int(ccall((:tl_cnn_classes, libtransferlens), Csize_t, (Ptr{Cvoid},), handle(cnn)))

"""The input image shape `(c, h, w)`."""
function input_shape(cnn::Cnn)
    c, h, w = Ref{UInt64}(0), Ref{UInt64}(0), Ref{UInt64}(0)
    GC.@preserve cnn begin
        check(ccall((:tl_cnn_input_shape, libtransferlens), UInt32,
                    (Ptr{Cvoid}, Ref{UInt64}, Ref{UInt64}, Ref{UInt64}), handle(cnn), c, h, w))
    end
    return (Int(c[]), Int(h[]), Int(w[]))
end

module_count(cnn::Cnn) =
    GC.@preserve cnn Int(ccall((:tl_cnn_module_count, libtransferlens), Csize_t, (Ptr{Cvoid},), handle(cnn)))

function module_name(cnn::Cnn, i::Integer)
    m = module_index(i)
    GC.@preserve cnn begin
        s = ccall((:tl_cnn_module_name, libtransferlens), Ptr{UInt8}, (Ptr{Cvoid}, Csize_t), handle(cnn), m)
        s == C_NULL && throw(TransferLensError(STATUS_NOT_FOUND, "module $i of a CNN of $(module_count(cnn)) modules"))
        return unsafe_string(s)
    end
end

module_names(cnn::Cnn) = [module_name(cnn, i) for i in 1:module_count(cnn)]

"""Features per image of module `i`'s output: the rows of [`activations`](@ref)."""
function module_width(cnn::Cnn, i::Integer)
    m = module_index(i)
    out = Ref{UInt64}(0)
    GC.@preserve cnn begin
        check(ccall((:tl_cnn_module_width, libtransferlens), UInt32, (Ptr{Cvoid}, Csize_t, Ref{UInt64}),
                    handle(cnn), m, out))
    end
    return Int(out[])
end

"""
    cnn_init(cnn, seed) -> Params

He-normal initial weights, grouped into the CNN's modules, with the specification in the
set's metadata.
"""
function cnn_init(cnn::Cnn, seed::Integer)
    out = Ref{Ptr{Cvoid}}(C_NULL)
    GC.@preserve cnn begin
        check(ccall((:tl_cnn_init, libtransferlens), UInt32, (Ptr{Cvoid}, UInt64, Ref{Ptr{Cvoid}}),
                    handle(cnn), UInt64(seed), out))
    end
    return Params(out[])
end

# The images as the C ABI takes them, checked against the CNN's input shape.
function cnn_images(cnn::Cnn, x::AbstractArray{<:Real,4})
    c, h, w = input_shape(cnn)
    size(x)[1:3] == (w, h, c) ||
        throw(TransferLensError(STATUS_SHAPE_MISMATCH, "images of size $(size(x)[1:3]), the CNN takes w × h × c = $((w, h, c))"))
    return Array{Float32,4}(x)
end

"""
    Evaluator(cnn, x, labels)

The CNN on the images `x` (`w × h × c × n`) with class `labels` (from 0), copied, as an evaluator
for every analysis.
"""
function Evaluator(cnn::Cnn, x::AbstractArray{<:Real,4}, labels::AbstractVector{<:Integer})
    xs = cnn_images(cnn, x)
    ls = Vector{UInt32}(labels)
    out = Ref{Ptr{Cvoid}}(C_NULL)
    GC.@preserve cnn xs ls begin
        check(ccall((:tl_evaluator_cnn, libtransferlens), UInt32,
                    (Ptr{Cvoid}, Ptr{Float32}, Ptr{UInt32}, UInt64, Ref{Ptr{Cvoid}}),
                    handle(cnn), xs, ls, UInt64(size(xs, 4)), out))
    end
    return Evaluator(out[], nothing)
end

"""
    train!(cnn, params, x, labels; opts = TrainOptions()) -> epoch losses

Trains `params` in place on the images `x` (`w × h × c × n`) with class `labels` (from 0);
returns each epoch's mean training loss.
"""
function train!(cnn::Cnn, p::Params, x::AbstractArray{<:Real,4}, labels::AbstractVector{<:Integer};
                opts::TrainOptions = TrainOptions())
    xs = cnn_images(cnn, x)
    ls = Vector{UInt32}(labels)
    losses = Vector{Float64}(undef, opts.epochs)
    GC.@preserve cnn p xs ls losses begin
        check(ccall((:tl_cnn_train, libtransferlens), UInt32,
                    (Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Float32}, Ptr{UInt32}, UInt64, Ref{TrainOptions}, Ptr{Float64}, Csize_t),
                    handle(cnn), handle(p), xs, ls, UInt64(size(xs, 4)), opts, losses, length(losses)))
    end
    return losses
end

"""
    mlp_train!(sizes, params, x, labels; opts = TrainOptions()) -> epoch losses

Trains the built-in MLP's `params` (from [`mlp_init`](@ref)) in place on the samples `x` (a
features × samples matrix) with class `labels` (from 0).
"""
function mlp_train!(sizes::AbstractVector{<:Integer}, p::Params, x::AbstractMatrix{<:Real},
                    labels::AbstractVector{<:Integer}; opts::TrainOptions = TrainOptions())
    s = Vector{UInt64}(sizes)
    xs = Matrix{Float32}(x)
    ls = Vector{UInt32}(labels)
    losses = Vector{Float64}(undef, opts.epochs)
    GC.@preserve s p xs ls losses begin
        check(ccall((:tl_mlp_train, libtransferlens), UInt32,
                    (Ptr{UInt64}, Csize_t, Ptr{Cvoid}, Ptr{Float32}, Ptr{UInt32}, UInt64, Ref{TrainOptions},
                     Ptr{Float64}, Csize_t),
                    s, length(s), handle(p), xs, ls, UInt64(size(xs, 2)), opts, losses, length(losses)))
    end
    return losses
end

"""
    activations(cnn, params, x, i) -> Matrix{Float32}

Module `i`'s output for the images `x`: a `module_width(cnn, i) × n` matrix (one column per
image, its features in NCHW order), ready for [`cka_linear`](@ref) as features × samples.
"""
function activations(cnn::Cnn, p::Params, x::AbstractArray{<:Real,4}, i::Integer)
    xs = cnn_images(cnn, x)
    m = module_index(i)
    out = Matrix{Float32}(undef, module_width(cnn, i), size(xs, 4))
    GC.@preserve cnn p xs out begin
        check(ccall((:tl_cnn_activations, libtransferlens), UInt32,
                    (Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Float32}, UInt64, Csize_t, Ptr{Float32}, UInt64),
                    handle(cnn), handle(p), xs, UInt64(size(xs, 4)), m, out, UInt64(length(out))))
    end
    return out
end

end # module
