"""
    TransferLens

Julia binding of transferlens (linear CKA, single, layer by layer and streaming with all-reduce
support) over its C ABI, `include/transferlens.h`.

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
[`Context`](@ref) and [`CkaAccumulator`](@ref) hold C handles, freed by `close` or, failing
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
end
@enum Backend::UInt32 BACKEND_AUTO = 0 BACKEND_CPU = 1 BACKEND_CUDA = 2
@enum DType::UInt32 DTYPE_F32 = 0 DTYPE_F64 = 1 DTYPE_F16 = 2 DTYPE_BF16 = 3
@enum Estimator::UInt32 BIASED = 0 DEBIASED = 1

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
struct BFloat16Bits{A<:AbstractMatrix{UInt16}}
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

end # module
