// transferlens for C++17: a header-only layer over the C ABI (include/transferlens.h).
//
// - Failures throw transferlens::Error, which carries the tl_status and the library's message.
// - Context, CkaAccumulator, Params and Evaluator own their C handles (RAII, move-only); nothing leaks on a throw.
// - MatrixView is a non-owning row-major view (rows = samples, cols = features); its dtype is
//   deduced from the element type: float -> F32, double -> F64. f16 and bf16 data are passed as
//   their uint16_t bit patterns with an explicit DType::F16 or DType::BF16.
// - The views only borrow memory: it must stay valid during the call that receives them.
//
// Thread safety follows the C ABI: a CPU Context may be shared by threads, a CkaAccumulator may
// not be used from two threads at once, a Params may be read by several threads but a call that
// writes into it (as the output of interpolate, interpolate_module, rewind, or a regrouping)
// needs it alone. An Evaluator is used by one call at a time.
//
// Evaluators, curves, barriers, criticality, rewind curves, block shuffle and prediction
// agreement are at the end: an Evaluator wraps a std::function evaluating the host's model (an
// exception it throws is caught at the C boundary and reported as TL_STATUS_CALLBACK with its
// message) or the built-in MLP.
#ifndef TRANSFERLENS_HPP
#define TRANSFERLENS_HPP

#include <array>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "transferlens.h"

namespace transferlens {

// ---------------------------------------------------------------------------------------------
// Basics: versions, status names, the exception type

enum class Backend : uint32_t { Auto = TL_BACKEND_AUTO, Cpu = TL_BACKEND_CPU, Cuda = TL_BACKEND_CUDA };
enum class DType : uint32_t { F32 = TL_DTYPE_F32, F64 = TL_DTYPE_F64, F16 = TL_DTYPE_F16, BF16 = TL_DTYPE_BF16 };
enum class Estimator : uint32_t { Biased = TL_CKA_BIASED, Debiased = TL_CKA_DEBIASED };

// The library's version ("MAJOR.MINOR.PATCH") as linked at run time.
inline std::string version() { return tl_version(); }
// The ABI version of the linked library; compare with TL_ABI_VERSION (the header's) to detect
// a library that does not match the header this program was compiled with.
inline uint32_t abi_version() noexcept { return tl_abi_version(); }
inline bool abi_matches() noexcept { return tl_abi_version() == TL_ABI_VERSION; }
inline const char* status_name(tl_status status) noexcept { return tl_status_name(status); }

// A failed call: the status code, its name and the library's message.
class Error : public std::runtime_error {
  public:
    Error(tl_status status, const std::string& message)
        : std::runtime_error(std::string(tl_status_name(status)) + ": " + message),
          status_(status),
          message_(message) {}
    tl_status status() const noexcept { return status_; }
    const char* status_name() const noexcept { return tl_status_name(status_); }
    const std::string& message() const noexcept { return message_; }

  private:
    tl_status status_;
    std::string message_;
};

namespace detail {
// Throws for a failed status. The message is read at once: it is only valid until this thread's
// next tl_ call.
inline void check(tl_status status) {
    if (status != TL_STATUS_OK) {
        std::string message = tl_last_error_message();  // copied before Error calls tl_status_name
        throw Error(status, message);
    }
}

template <class T>
struct dtype_of;  // float and double only: 16-bit data needs an explicit DType
template <>
struct dtype_of<float> {
    static constexpr DType value = DType::F32;
};
template <>
struct dtype_of<double> {
    static constexpr DType value = DType::F64;
};

// Elements a row-major view spans: (rows - 1) * stride + cols (0 for no rows).
inline uint64_t span_len(uint64_t rows, uint64_t cols, uint64_t stride) {
    return rows == 0 ? 0 : (rows - 1) * (stride == 0 ? cols : stride) + cols;
}

template <class C, class = void>
struct is_contiguous : std::false_type {};
template <class C>
struct is_contiguous<C, std::void_t<decltype(std::declval<const C&>().data()),
                                    decltype(std::declval<const C&>().size())>> : std::true_type {};
}  // namespace detail

// ---------------------------------------------------------------------------------------------
// MatrixView: a tl_matrix built with checks

class MatrixView {
  public:
    // Host data, dtype from the element type (float or double). row_stride: elements between
    // row starts, 0 meaning cols.
    template <class T, class = std::enable_if_t<std::is_floating_point<T>::value>>
    MatrixView(const T* data, uint64_t rows, uint64_t cols, uint64_t row_stride = 0)
        : m_{data, static_cast<tl_dtype>(detail::dtype_of<T>::value), rows, cols, row_stride, -1} {}

    // 16-bit host data as bit patterns: dtype must be DType::F16 or DType::BF16.
    MatrixView(const uint16_t* bits, DType dtype, uint64_t rows, uint64_t cols, uint64_t row_stride = 0)
        : m_{bits, static_cast<tl_dtype>(dtype), rows, cols, row_stride, -1} {
        if (dtype != DType::F16 && dtype != DType::BF16)
            throw Error(TL_STATUS_INVALID_ARGUMENT, "uint16_t data needs DType::F16 or DType::BF16");
    }

    // Any contiguous container with data() and size() (std::vector, std::array, std::span):
    // checks that it holds the elements the view spans, so the library never reads past it.
    template <class C, class = std::enable_if_t<detail::is_contiguous<C>::value>>
    MatrixView(const C& container, uint64_t rows, uint64_t cols, uint64_t row_stride = 0)
        : MatrixView(container.data(), rows, cols, row_stride) {
        if (detail::span_len(rows, cols, row_stride) > static_cast<uint64_t>(container.size()))
            throw Error(TL_STATUS_SHAPE_MISMATCH,
                        "the container holds " + std::to_string(container.size()) + " elements, the view spans " +
                            std::to_string(detail::span_len(rows, cols, row_stride)));
    }
    // A temporary std::vector would be gone before the view is used.
    template <class T, class A>
    MatrixView(std::vector<T, A>&&, uint64_t, uint64_t, uint64_t = 0) = delete;

    // Memory of CUDA device `device` (a device pointer from the training framework).
    static MatrixView on_device(const void* data, DType dtype, int32_t device, uint64_t rows, uint64_t cols,
                                uint64_t row_stride = 0) {
        MatrixView v;
        v.m_ = tl_matrix{data, static_cast<tl_dtype>(dtype), rows, cols, row_stride, device};
        return v;
    }

    // Rows [first, first + count) of this view: the same memory, no copy (a batch of samples).
    MatrixView rows(uint64_t first, uint64_t count) const {
        if (first > m_.rows || count > m_.rows - first)
            throw Error(TL_STATUS_INVALID_ARGUMENT, "rows [" + std::to_string(first) + ", " +
                                                        std::to_string(first + count) + ") of a view of " +
                                                        std::to_string(m_.rows) + " rows");
        MatrixView v = *this;
        const uint64_t stride = m_.row_stride == 0 ? m_.cols : m_.row_stride;
        v.m_.data = static_cast<const unsigned char*>(m_.data) + first * stride * elem_size();
        v.m_.rows = count;
        v.m_.row_stride = stride;
        return v;
    }

    uint64_t rows() const noexcept { return m_.rows; }
    uint64_t cols() const noexcept { return m_.cols; }
    DType dtype() const noexcept { return static_cast<DType>(m_.dtype); }
    const tl_matrix& raw() const noexcept { return m_; }

  private:
    MatrixView() : m_{nullptr, TL_DTYPE_F32, 0, 0, 0, -1} {}
    size_t elem_size() const noexcept { return m_.dtype == TL_DTYPE_F64 ? 8 : m_.dtype == TL_DTYPE_F32 ? 4 : 2; }
    tl_matrix m_;
};

namespace detail {
inline std::vector<tl_matrix> raw_views(const std::vector<MatrixView>& views) {
    std::vector<tl_matrix> out;
    out.reserve(views.size());
    for (const auto& v : views) out.push_back(v.raw());
    return out;
}
}  // namespace detail

// nx x ny CKA values, row-major: at(i, j) = CKA(xs[i], ys[j]).
struct CkaMatrix {
    size_t nx = 0;
    size_t ny = 0;
    std::vector<double> values;
    double at(size_t i, size_t j) const { return values.at(i * ny + j); }
};

// CKA statistics (Context::cka_statistics): the report of tl_cka_statistics (values of a
// statistic not asked for are NaN) and the most influential samples, largest |delta| first.
struct CkaStatistics {
    tl_cka_stats_report report{};
    std::vector<uint64_t> top_samples;
    std::vector<double> top_deltas;
};

// ---------------------------------------------------------------------------------------------
// Context

class Context {
  public:
    // AUTO picks CUDA when a driver and a device are present, else the CPU. CUDA asked for
    // without them throws Error with TL_STATUS_DEVICE_UNAVAILABLE.
    explicit Context(Backend backend = Backend::Auto, int32_t device = 0) {
        detail::check(tl_context_create(static_cast<tl_backend>(backend), device, &ctx_));
    }
    static Context cpu() { return Context(Backend::Cpu); }

    ~Context() { tl_context_destroy(ctx_); }
    Context(const Context&) = delete;
    Context& operator=(const Context&) = delete;
    Context(Context&& other) noexcept : ctx_(std::exchange(other.ctx_, nullptr)) {}
    Context& operator=(Context&& other) noexcept {
        if (this != &other) {
            tl_context_destroy(ctx_);
            ctx_ = std::exchange(other.ctx_, nullptr);
        }
        return *this;
    }

    // The resolved backend: Cpu or Cuda.
    Backend backend() const {
        tl_backend out = TL_BACKEND_AUTO;
        detail::check(tl_context_backend(handle(), &out));
        return static_cast<Backend>(out);
    }

    // Linear CKA of x and y (rows are the same samples).
    double cka_linear(const MatrixView& x, const MatrixView& y, Estimator estimator) const {
        double out = 0.0;
        detail::check(tl_cka_linear(handle(), &x.raw(), &y.raw(), static_cast<tl_cka_estimator>(estimator), &out));
        return out;
    }

    // CKA of every pair of layers; each layer's Gram is formed once.
    CkaMatrix cka_matrix(const std::vector<MatrixView>& xs, const std::vector<MatrixView>& ys,
                         Estimator estimator) const {
        CkaMatrix out{xs.size(), ys.size(), std::vector<double>(xs.size() * ys.size())};
        const auto rx = detail::raw_views(xs), ry = detail::raw_views(ys);
        detail::check(tl_cka_matrix(handle(), rx.data(), rx.size(), ry.data(), ry.size(),
                                    static_cast<tl_cka_estimator>(estimator), out.values.data()));
        return out;
    }

    // How far to trust CKA(x, y): an interval (opts.resamples > 0; jackknife or bootstrap:
    // opts.interval), a permutation null (opts.permutations > 0) and the `top` most influential
    // samples (see tl_cka_statistics).
    CkaStatistics cka_statistics(const MatrixView& x, const MatrixView& y, const tl_cka_stats_options& opts,
                                 size_t top = 0) const {
        CkaStatistics out;
        out.report.size = sizeof out.report;
        out.top_samples.resize(top);
        out.top_deltas.resize(top);
        detail::check(tl_cka_statistics(handle(), &x.raw(), &y.raw(), &opts, &out.report,
                                        top ? out.top_samples.data() : nullptr,
                                        top ? out.top_deltas.data() : nullptr, top));
        out.top_samples.resize(out.report.top_written);
        out.top_deltas.resize(out.report.top_written);
        return out;
    }

    // The C handle (still owned by this object), for calls this header does not wrap.
    tl_context* get() const noexcept { return ctx_; }
    // Gives up ownership: the caller frees the handle with tl_context_destroy.
    tl_context* release() noexcept { return std::exchange(ctx_, nullptr); }

  private:
    tl_context* handle() const {
        if (!ctx_) throw Error(TL_STATUS_NULL_ARGUMENT, "use of a moved-from transferlens::Context");
        return ctx_;
    }
    tl_context* ctx_ = nullptr;
};

namespace detail {
inline tl_context* context_handle(const Context& ctx) {
    if (!ctx.get()) throw Error(TL_STATUS_NULL_ARGUMENT, "use of a moved-from transferlens::Context");
    return ctx.get();
}
}  // namespace detail

// ---------------------------------------------------------------------------------------------
// CkaAccumulator: exact streaming CKA over batches, mergeable within and across processes

class CkaAccumulator {
  public:
    // An exported state: the shift and the moments (moments[0] is the sample count). Moments of
    // accumulators with equal shifts add up: see tl_cka_accumulator in the C header.
    struct State {
        std::vector<double> shift;
        std::vector<double> moments;
    };

    // The accumulator keeps its own reference to the context's backend: ctx may go first.
    CkaAccumulator(const Context& ctx, size_t nx, size_t ny, Estimator estimator) : nx_(nx), ny_(ny) {
        if (!ctx.get()) throw Error(TL_STATUS_NULL_ARGUMENT, "use of a moved-from transferlens::Context");
        detail::check(tl_cka_accumulator_create(ctx.get(), nx, ny, static_cast<tl_cka_estimator>(estimator), &acc_));
    }
    ~CkaAccumulator() { tl_cka_accumulator_destroy(acc_); }
    CkaAccumulator(const CkaAccumulator&) = delete;
    CkaAccumulator& operator=(const CkaAccumulator&) = delete;
    CkaAccumulator(CkaAccumulator&& other) noexcept
        : acc_(std::exchange(other.acc_, nullptr)), nx_(other.nx_), ny_(other.ny_) {}
    CkaAccumulator& operator=(CkaAccumulator&& other) noexcept {
        if (this != &other) {
            tl_cka_accumulator_destroy(acc_);
            acc_ = std::exchange(other.acc_, nullptr);
            nx_ = other.nx_;
            ny_ = other.ny_;
        }
        return *this;
    }

    size_t nx() const noexcept { return nx_; }
    size_t ny() const noexcept { return ny_; }

    // Adds a batch: nx views of x layers and ny of y layers, all with the same rows. The counts
    // are checked here because the C function reads exactly nx and ny views.
    void update(const std::vector<MatrixView>& xs, const std::vector<MatrixView>& ys) {
        if (xs.size() != nx_ || ys.size() != ny_)
            throw Error(TL_STATUS_SHAPE_MISMATCH, "update got " + std::to_string(xs.size()) + " x and " +
                                                      std::to_string(ys.size()) + " y layers; the accumulator has " +
                                                      std::to_string(nx_) + " and " + std::to_string(ny_));
        const auto rx = detail::raw_views(xs), ry = detail::raw_views(ys);
        detail::check(tl_cka_accumulator_update(handle(), rx.data(), ry.data()));
    }

    // Adds the state of `from` (same layer and feature counts).
    void merge(const CkaAccumulator& from) { detail::check(tl_cka_accumulator_merge(handle(), from.handle())); }

    CkaMatrix result() const {
        CkaMatrix out{nx_, ny_, std::vector<double>(nx_ * ny_)};
        detail::check(tl_cka_accumulator_result(handle(), out.values.data()));
        return out;
    }

    // Lengths of the exported state; both 0 until the feature counts are fixed.
    std::pair<size_t, size_t> state_size() const {
        size_t shift = 0, moments = 0;
        detail::check(tl_cka_accumulator_state_size(handle(), &shift, &moments));
        return {shift, moments};
    }

    State export_state() const {
        const auto sizes = state_size();
        State s{std::vector<double>(sizes.first), std::vector<double>(sizes.second)};
        detail::check(
            tl_cka_accumulator_export(handle(), s.shift.data(), s.shift.size(), s.moments.data(), s.moments.size()));
        return s;
    }

    // Re-expresses the moments relative to `shift` (another process's exported shift).
    void rebase(const std::vector<double>& shift) {
        detail::check(tl_cka_accumulator_rebase(handle(), shift.data(), shift.size()));
    }

    // Replaces the state with an exported (possibly all-reduced) one.
    void import_state(const State& s) {
        detail::check(
            tl_cka_accumulator_import(handle(), s.shift.data(), s.shift.size(), s.moments.data(), s.moments.size()));
    }

    // Fixes the feature counts (nx x widths, then ny y widths) before any data, so that a state
    // can be imported into a fresh accumulator.
    void set_widths(const std::vector<uint64_t>& widths) {
        detail::check(tl_cka_accumulator_set_widths(handle(), widths.data(), widths.size()));
    }

    tl_cka_accumulator* get() const noexcept { return acc_; }
    tl_cka_accumulator* release() noexcept { return std::exchange(acc_, nullptr); }

  private:
    tl_cka_accumulator* handle() const {
        if (!acc_) throw Error(TL_STATUS_NULL_ARGUMENT, "use of a moved-from transferlens::CkaAccumulator");
        return acc_;
    }
    tl_cka_accumulator* acc_ = nullptr;
    size_t nx_ = 0;
    size_t ny_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Params: parameter sets (safetensors files, wrapped caller memory, clones), grouped into modules

// How tensor names are grouped into modules.
enum class Grouping : uint32_t {
    First = TL_MODULE_GROUPING_FIRST,        // the first dot-separated component (the default)
    Depth = TL_MODULE_GROUPING_DEPTH,        // the first `depth` components
    Prefixes = TL_MODULE_GROUPING_PREFIXES,  // explicit prefixes, longest whole-component match
    Tensor = TL_MODULE_GROUPING_TENSOR,      // every tensor its own module
};
// What prefix grouping does with a weight no prefix matches.
enum class Unmatched : uint32_t { OwnGroup = TL_UNMATCHED_OWN_GROUP, Error = TL_UNMATCHED_ERROR };

// One tensor in the caller's memory, for Params::wrap: the data is used in place (the set
// writes into it when it is the output of an interpolation); the name and shape are copied.
struct Tensor {
    std::string name;
    void* data = nullptr;
    DType dtype = DType::F32;
    std::vector<uint64_t> shape;
    int32_t device = -1;

    Tensor(std::string name_, void* data_, DType dtype_, std::vector<uint64_t> shape_, int32_t device_ = -1)
        : name(std::move(name_)), data(data_), dtype(dtype_), shape(std::move(shape_)), device(device_) {}
    // float or double data: the dtype follows from the element type.
    template <class T, class = std::enable_if_t<std::is_floating_point<T>::value>>
    Tensor(std::string name_, T* data_, std::vector<uint64_t> shape_)
        : Tensor(std::move(name_), data_, detail::dtype_of<T>::value, std::move(shape_)) {}
    // A container (std::vector, std::array) whose size must equal the shape's element count.
    template <class C, class = std::enable_if_t<detail::is_contiguous<C>::value>>
    Tensor(std::string name_, C& container, std::vector<uint64_t> shape_)
        : Tensor(std::move(name_), container.data(), std::move(shape_)) {
        uint64_t n = 1;
        for (uint64_t d : shape) n *= d;
        if (n != static_cast<uint64_t>(container.size()))
            throw Error(TL_STATUS_SHAPE_MISMATCH, "tensor " + name + ": the container holds " +
                                                      std::to_string(container.size()) + " elements, the shape " +
                                                      std::to_string(n));
    }
};

// A weight tensor of a set, as tl_params_tensor_data gives it: host memory owned by the set,
// valid until the set is destroyed.
struct TensorData {
    DType dtype;
    const void* data;
    uint64_t numel;
    // The elements as T (float for F32, double for F64, uint16_t bits for F16 and BF16).
    template <class T>
    std::vector<T> values() const {
        const bool ok = std::is_same<T, float>::value   ? dtype == DType::F32
                        : std::is_same<T, double>::value ? dtype == DType::F64
                        : std::is_same<T, uint16_t>::value
                            ? (dtype == DType::F16 || dtype == DType::BF16)
                            : false;
        if (!ok) throw Error(TL_STATUS_UNSUPPORTED_DTYPE, "the tensor's dtype does not match the element type");
        const T* p = static_cast<const T*>(data);
        return std::vector<T>(p, p + numel);
    }
};

// Figures per module and over all weights: per_module has module_count() entries.
struct ModuleValues {
    std::vector<double> per_module;
    double total = 0.0;
};

using ModuleGeometry = tl_module_geometry;
// Distance, norms, relative distance and cosine per module and over all weights.
struct Comparison {
    std::vector<ModuleGeometry> per_module;
    ModuleGeometry total{};
};

class Params {
  public:
    // Loads a safetensors file into memory the set owns: the set is a snapshot, and truncating or
    // rewriting the file afterwards changes nothing in it (the file itself is never modified).
    // A missing file, or a path that is not a regular file, is TL_STATUS_IO; a malformed one
    // TL_STATUS_FORMAT.
    static Params load(const Context& ctx, const std::string& path) {
        Params p;
        detail::check(tl_params_load(detail::context_handle(ctx), path.c_str(), &p.p_));
        return p;
    }
    // Like load, but maps the file (private, copy-on-write) instead of copying it: pages are read
    // when first used, and writes into the set never reach the file. The file must not be
    // truncated or modified while the set lives: a truncated file stops the process (SIGBUS) when
    // a lost page is touched, and a file rewritten in place changes the set's weights under it.
    // For files larger than the memory a copy may take; load is the safe default.
    static Params load_mapped(const Context& ctx, const std::string& path) {
        Params p;
        detail::check(tl_params_load_mapped(detail::context_handle(ctx), path.c_str(), &p.p_));
        return p;
    }
    // A checkpoint as it is kept: a safetensors file, a folder holding model.safetensors, or a
    // sharded checkpoint (its folder or its model.safetensors.index.json), copied into memory the
    // set owns. The shards are checked against the index (TL_STATUS_FORMAT naming the tensor at
    // fault); the files must not be truncated while the call reads them.
    static Params load_checkpoint(const Context& ctx, const std::string& path) {
        Params p;
        detail::check(tl_params_load_checkpoint(detail::context_handle(ctx), path.c_str(), &p.p_));
        return p;
    }
    // A set over the caller's memory, zero-copy: the tensors' data must outlive the set.
    static Params wrap(const Context& ctx, const std::vector<Tensor>& tensors) {
        std::vector<tl_tensor> raw;
        raw.reserve(tensors.size());
        for (const Tensor& t : tensors)
            raw.push_back(tl_tensor{t.name.c_str(), t.data, static_cast<tl_dtype>(t.dtype),
                                    t.shape.empty() ? nullptr : t.shape.data(), t.shape.size(), t.device});
        Params p;
        detail::check(tl_params_wrap(detail::context_handle(ctx), raw.empty() ? nullptr : raw.data(), raw.size(), &p.p_));
        return p;
    }

    ~Params() { tl_params_destroy(p_); }
    Params(const Params&) = delete;
    Params& operator=(const Params&) = delete;
    Params(Params&& other) noexcept : p_(std::exchange(other.p_, nullptr)) {}
    Params& operator=(Params&& other) noexcept {
        if (this != &other) {
            tl_params_destroy(p_);
            p_ = std::exchange(other.p_, nullptr);
        }
        return *this;
    }

    // A deep copy in memory the new set owns: a place to write interpolations into.
    Params clone() const {
        Params p;
        detail::check(tl_params_clone(handle(), &p.p_));
        return p;
    }
    // Writes the set as a safetensors file, atomically.
    void save(const std::string& path) const { detail::check(tl_params_save(handle(), path.c_str())); }

    // Regrouping; on failure the grouping is unchanged.
    void group_by_first() { set_grouping(Grouping::First); }
    void group_by_depth(uint32_t depth) { set_grouping(Grouping::Depth, depth); }
    void group_by_prefixes(const std::vector<std::string>& prefixes, Unmatched unmatched = Unmatched::OwnGroup) {
        set_grouping(Grouping::Prefixes, 0, prefixes, unmatched);
    }
    void group_by_tensor() { set_grouping(Grouping::Tensor); }
    void set_grouping(Grouping grouping, uint32_t depth = 0, const std::vector<std::string>& prefixes = {},
                      Unmatched unmatched = Unmatched::OwnGroup) {
        std::vector<const char*> raw;
        raw.reserve(prefixes.size());
        for (const std::string& s : prefixes) raw.push_back(s.c_str());
        detail::check(tl_params_set_grouping(handle(), static_cast<tl_module_grouping>(grouping), depth,
                                             raw.empty() ? nullptr : raw.data(), raw.size(),
                                             static_cast<tl_unmatched>(unmatched)));
    }

    size_t module_count() const { return tl_params_module_count(handle()); }
    size_t tensor_count() const { return tl_params_tensor_count(handle()); }
    // The name of module `module`; NOT_FOUND when it is out of range.
    std::string module_name(size_t module) const {
        const size_t len = tl_params_module_name(handle(), module, nullptr, 0);  // counts the NUL
        if (len == 0)
            throw Error(TL_STATUS_NOT_FOUND, "module " + std::to_string(module) + " of a set of " +
                                                 std::to_string(module_count()) + " modules");
        std::string name(len, '\0');
        tl_params_module_name(handle(), module, &name[0], len);
        name.resize(len - 1);
        return name;
    }
    std::vector<std::string> module_names() const {
        std::vector<std::string> names;
        const size_t n = module_count();
        names.reserve(n);
        for (size_t i = 0; i < n; i++) names.push_back(module_name(i));
        return names;
    }
    // The index of the module called `name`; NOT_FOUND when there is none.
    size_t find_module(const std::string& name) const {
        size_t out = 0;
        detail::check(tl_params_find_module(handle(), name.c_str(), &out));
        return out;
    }
    // The weight tensor called `name` (NOT_FOUND, or UNSUPPORTED_DTYPE for a carried-through one).
    TensorData tensor_data(const std::string& name) const {
        tl_dtype dtype = TL_DTYPE_F32;
        const void* data = nullptr;
        uint64_t numel = 0;
        detail::check(tl_params_tensor_data(handle(), name.c_str(), &dtype, &data, &numel));
        return TensorData{static_cast<DType>(dtype), data, numel};
    }

    // ||this_i - other_i|| per module of this set's grouping, and the total.
    ModuleValues distance(const Context& ctx, const Params& other) const {
        const size_t n = module_count();
        ModuleValues out{std::vector<double>(n + 1), 0.0};  // never a NULL output, even for no modules
        detail::check(tl_params_distance(detail::context_handle(ctx), handle(), other.handle(),
                                         out.per_module.data(), &out.total));
        out.per_module.resize(n);
        return out;
    }
    // ||p_i|| per module, and of all weights.
    ModuleValues norms(const Context& ctx) const {
        const size_t n = module_count();
        ModuleValues out{std::vector<double>(n + 1), 0.0};
        detail::check(tl_params_norms(detail::context_handle(ctx), handle(), out.per_module.data(), &out.total));
        out.per_module.resize(n);
        return out;
    }
    // Distance, norms, relative distance and cosine of this set (a) against other (b).
    Comparison compare(const Context& ctx, const Params& other) const {
        const size_t n = module_count();
        Comparison out{std::vector<ModuleGeometry>(n + 1), ModuleGeometry{}};
        detail::check(tl_params_compare(detail::context_handle(ctx), handle(), other.handle(),
                                        out.per_module.data(), &out.total));
        out.per_module.resize(n);
        return out;
    }

    // The writers: this set (holding a's weights, not a or b) receives the result.
    // this = (1 - lambda) a + lambda b.
    Params& interpolate(const Context& ctx, const Params& a, const Params& b, double lambda) {
        detail::check(tl_params_interpolate(detail::context_handle(ctx), a.handle(), b.handle(), lambda, handle()));
        return *this;
    }
    // Module `module` of a at (1 - lambda) a + lambda b, every other weight at b.
    Params& interpolate_module(const Context& ctx, const Params& a, const Params& b, double lambda, size_t module) {
        detail::check(tl_params_interpolate_module(detail::context_handle(ctx), a.handle(), b.handle(), lambda,
                                                   module, handle()));
        return *this;
    }
    // Module `module` at (1 - alpha) initial + alpha final, every other weight at final.
    Params& rewind(const Context& ctx, const Params& initial, const Params& final_params, size_t module,
                   double alpha) {
        detail::check(tl_params_rewind(detail::context_handle(ctx), initial.handle(), final_params.handle(), module,
                                       alpha, handle()));
        return *this;
    }

    tl_params* get() const noexcept { return p_; }
    tl_params* release() noexcept { return std::exchange(p_, nullptr); }
    // Takes ownership of a set from the C ABI (NULL is refused).
    static Params adopt(tl_params* raw) {
        if (!raw) throw Error(TL_STATUS_NULL_ARGUMENT, "Params::adopt of a null tl_params");
        Params p;
        p.p_ = raw;
        return p;
    }

  private:
    Params() = default;
    tl_params* handle() const {
        if (!p_) throw Error(TL_STATUS_NULL_ARGUMENT, "use of a moved-from transferlens::Params");
        return p_;
    }
    tl_params* p_ = nullptr;
};

// ---------------------------------------------------------------------------------------------
// Evaluators, landscape, criticality, data tools

enum class Metric : uint32_t { Loss = TL_METRIC_LOSS, Error = TL_METRIC_ERROR, Accuracy = TL_METRIC_ACCURACY };

using Metrics = tl_metrics;                 // loss, error, accuracy
using BarrierResult = tl_barrier_result;    // value, peak_lambda, start, end, same_basin
using Criticality = tl_criticality;         // value (+inf when infeasible), alpha, sigma, ...
using NetworkSummary = tl_network_summary;  // total, final_metric, eps, joint_expected
using CriticalityReport = tl_criticality_report;  // value, per_parameter, pac_bayes_term, spread, ...
using NetworkReport = tl_network_report;          // total, total_spread, ranking_agreement, ...
using BoundReport = tl_bound_report;              // bound, held_out, vacuous, has_held_out

// Options of module criticality: the library's defaults, with `size` set to this version's
// struct size. Change fields after construction.
struct CriticalityOptions : tl_criticality_options {
    CriticalityOptions() : tl_criticality_options(tl_criticality_options_default()) {
        size = sizeof(tl_criticality_options);
    }
    // The public implementation's grid (tl_criticality_options_reference).
    static CriticalityOptions reference() {
        CriticalityOptions o;
        static_cast<tl_criticality_options&>(o) = tl_criticality_options_reference();
        o.size = sizeof(tl_criticality_options);
        return o;
    }
};

// Records the host's description of a failure from inside an evaluation callback (an Evaluator
// built from a std::function does this itself for an exception). nullptr clears it.
inline void set_callback_error(const char* message) noexcept { tl_set_callback_error(message); }

// An evaluator: a host callback or the built-in MLP. Move-only; used by one call at a time.
class Evaluator {
  public:
    // f evaluates the host's model, whose weights the library has just written into the live
    // set (the set wrapped around the model's memory and passed as `live`); it receives that
    // set's handle. An exception thrown by f becomes TL_STATUS_CALLBACK with its what().
    using Function = std::function<Metrics(const tl_params*)>;

    explicit Evaluator(Function f) : fn_(std::make_unique<Function>(std::move(f))) {
        if (!*fn_) throw Error(TL_STATUS_NULL_ARGUMENT, "an Evaluator needs a callable");
        detail::check(tl_evaluator_from_callback(&Evaluator::trampoline, fn_.get(), &ev_));
    }

    // The built-in MLP with widths `sizes` (inputs, hidden..., classes) on x (rows x sizes[0]
    // floats, row major) with one label per row. The data are copied.
    static Evaluator mlp(const std::vector<uint64_t>& sizes, const std::vector<float>& x,
                         const std::vector<uint32_t>& labels) {
        if (sizes.empty() || x.size() != labels.size() * sizes[0])
            throw Error(TL_STATUS_SHAPE_MISMATCH, "x holds " + std::to_string(x.size()) + " floats for " +
                                                      std::to_string(labels.size()) + " labels");
        Evaluator e;
        detail::check(
            tl_evaluator_mlp(sizes.data(), sizes.size(), x.data(), labels.data(), labels.size(), &e.ev_));
        return e;
    }

    // Takes ownership of an evaluator from the C ABI (NULL is refused).
    static Evaluator adopt(tl_evaluator* raw) {
        if (!raw) throw Error(TL_STATUS_NULL_ARGUMENT, "Evaluator::adopt of a null tl_evaluator");
        Evaluator e;
        e.ev_ = raw;
        return e;
    }

    ~Evaluator() { tl_evaluator_destroy(ev_); }
    Evaluator(const Evaluator&) = delete;
    Evaluator& operator=(const Evaluator&) = delete;
    Evaluator(Evaluator&& other) noexcept
        : ev_(std::exchange(other.ev_, nullptr)), fn_(std::move(other.fn_)) {}
    Evaluator& operator=(Evaluator&& other) noexcept {
        if (this != &other) {
            tl_evaluator_destroy(ev_);
            ev_ = std::exchange(other.ev_, nullptr);
            fn_ = std::move(other.fn_);
        }
        return *this;
    }

    // The metrics of `params` (for a callback: the live set it evaluates).
    Metrics evaluate(const Params& params) {
        Metrics out{};
        detail::check(tl_evaluate(handle(), params.get(), &out));
        return out;
    }

    tl_evaluator* get() const noexcept { return ev_; }
    tl_evaluator* handle() const {
        if (!ev_) throw Error(TL_STATUS_NULL_ARGUMENT, "use of a moved-from transferlens::Evaluator");
        return ev_;
    }

  private:
    Evaluator() = default;
    // No exception crosses into C: it is caught here and reported as the callback's error.
    static int32_t trampoline(void* user, const tl_params* params, tl_metrics* out) noexcept {
        try {
            *out = (*static_cast<Function*>(user))(params);
            return 0;
        } catch (const std::exception& e) {
            tl_set_callback_error(e.what());
        } catch (...) {
            tl_set_callback_error("the C++ evaluation callback threw a non-std::exception");
        }
        return 1;
    }
    tl_evaluator* ev_ = nullptr;
    std::unique_ptr<Function> fn_;  // stable address: the C evaluator holds it as user data
};

namespace detail {
inline const tl_params* params_handle(const Params& p) {
    if (!p.get()) throw Error(TL_STATUS_NULL_ARGUMENT, "use of a moved-from transferlens::Params");
    return p.get();
}
inline std::vector<const tl_params*> params_handles(const std::vector<const Params*>& sets) {
    std::vector<const tl_params*> out;
    out.reserve(sets.size());
    for (const Params* p : sets) {
        if (!p) throw Error(TL_STATUS_NULL_ARGUMENT, "a null checkpoint");
        out.push_back(params_handle(*p));
    }
    return out;
}
}  // namespace detail

// Initial weights of the built-in MLP: He-normal weights from `seed`, zero biases.
inline Params mlp_init(const std::vector<uint64_t>& sizes, uint64_t seed) {
    tl_params* raw = nullptr;
    detail::check(tl_mlp_init(sizes.data(), sizes.size(), seed, &raw));
    return Params::adopt(raw);
}

// The metrics along (1 - lambda) a + lambda b, each point written into `live` (holding a's
// weights). module >= 0 moves only that module (the rest stays at b); -1 moves all.
inline std::vector<Metrics> interpolation_curve(const Context& ctx, Evaluator& evaluator, const Params& a,
                                                const Params& b, Params& live, const std::vector<double>& lambdas,
                                                int64_t module = -1) {
    std::vector<Metrics> out(lambdas.size());
    detail::check(tl_interpolation_curve(detail::context_handle(ctx), evaluator.handle(), detail::params_handle(a),
                                         detail::params_handle(b), live.get(), lambdas.data(), lambdas.size(),
                                         module, out.data()));
    return out;
}

// The barrier of a curve; lambdas must contain 0 and 1.
inline BarrierResult barrier(const std::vector<double>& lambdas, const std::vector<Metrics>& curve, Metric metric,
                             double tolerance = 0.0) {
    if (lambdas.size() != curve.size())
        throw Error(TL_STATUS_SHAPE_MISMATCH, std::to_string(lambdas.size()) + " lambdas but " +
                                                  std::to_string(curve.size()) + " curve points");
    BarrierResult out{};
    detail::check(tl_barrier(lambdas.data(), curve.data(), lambdas.size(), static_cast<tl_metric>(metric), tolerance,
                             &out));
    return out;
}

// The criticality of module `module` of `final_params` along the straight path from `init`.
inline Criticality module_criticality(const Context& ctx, Evaluator& evaluator, const Params& init,
                                      const Params& final_params, Params& live, size_t module,
                                      const CriticalityOptions& opts = CriticalityOptions()) {
    Criticality out{};
    detail::check(tl_module_criticality(detail::context_handle(ctx), evaluator.handle(), detail::params_handle(init),
                                        detail::params_handle(final_params), nullptr, 0, live.get(), module, &opts,
                                        &out));
    return out;
}

// The same along the piecewise-linear path through `checkpoints` (first initial, last final).
inline Criticality module_criticality(const Context& ctx, Evaluator& evaluator,
                                      const std::vector<const Params*>& checkpoints, Params& live, size_t module,
                                      const CriticalityOptions& opts = CriticalityOptions()) {
    const auto raw = detail::params_handles(checkpoints);
    Criticality out{};
    detail::check(tl_module_criticality(detail::context_handle(ctx), evaluator.handle(), nullptr, nullptr,
                                        raw.empty() ? nullptr : raw.data(), raw.size(), live.get(), module, &opts,
                                        &out));
    return out;
}

struct NetworkCriticality {
    std::vector<Criticality> modules;  // one per module of the final set
    NetworkSummary summary;
};

// Every module's criticality and their sum, along the straight path from `init`.
inline NetworkCriticality network_criticality(const Context& ctx, Evaluator& evaluator, const Params& init,
                                              const Params& final_params, Params& live,
                                              const CriticalityOptions& opts = CriticalityOptions()) {
    NetworkCriticality out{std::vector<Criticality>(final_params.module_count()), NetworkSummary{}};
    detail::check(tl_network_criticality(detail::context_handle(ctx), evaluator.handle(), detail::params_handle(init),
                                         detail::params_handle(final_params), nullptr, 0, live.get(), &opts,
                                         out.modules.data(), out.modules.size(), &out.summary));
    return out;
}

// The same along the piecewise-linear path through `checkpoints`.
inline NetworkCriticality network_criticality(const Context& ctx, Evaluator& evaluator,
                                              const std::vector<const Params*>& checkpoints, Params& live,
                                              const CriticalityOptions& opts = CriticalityOptions()) {
    const auto raw = detail::params_handles(checkpoints);
    if (raw.empty()) throw Error(TL_STATUS_INVALID_ARGUMENT, "network_criticality needs checkpoints");
    NetworkCriticality out{std::vector<Criticality>(tl_params_module_count(raw.back())), NetworkSummary{}};
    detail::check(tl_network_criticality(detail::context_handle(ctx), evaluator.handle(), nullptr, nullptr,
                                         raw.data(), raw.size(), live.get(), &opts, out.modules.data(),
                                         out.modules.size(), &out.summary));
    return out;
}

// The PAC-Bayes bound of the criticality theorem for m samples and confidence delta; `expected`
// is the metric under the joint perturbation (NetworkSummary::joint_expected). +inf when a
// module is infeasible.
inline double pac_bayes_bound(const std::vector<Criticality>& modules, double expected, uint64_t m, double delta) {
    double out = 0;
    detail::check(
        tl_pac_bayes_bound(modules.empty() ? nullptr : modules.data(), modules.size(), expected, m, delta, &out));
    return out;
}

// tl_module_criticality_report along the straight path from `init`: the full report of one module.
inline CriticalityReport module_criticality_report(const Context& ctx, Evaluator& evaluator, const Params& init,
                                                   const Params& final_params, Params& live, size_t module,
                                                   const CriticalityOptions& opts = CriticalityOptions()) {
    CriticalityReport out{};
    out.size = sizeof(CriticalityReport);
    detail::check(tl_module_criticality_report(detail::context_handle(ctx), evaluator.handle(),
                                               detail::params_handle(init), detail::params_handle(final_params),
                                               nullptr, 0, live.get(), module, &opts, &out));
    return out;
}

struct NetworkCriticalityReport {
    std::vector<CriticalityReport> modules;  // one per module of the final set
    NetworkReport summary;
};

// tl_network_criticality_report along the straight path from `init`.
inline NetworkCriticalityReport network_criticality_report(const Context& ctx, Evaluator& evaluator,
                                                           const Params& init, const Params& final_params,
                                                           Params& live,
                                                           const CriticalityOptions& opts = CriticalityOptions()) {
    CriticalityReport blank{};
    blank.size = sizeof(CriticalityReport);
    NetworkCriticalityReport out{std::vector<CriticalityReport>(final_params.module_count(), blank), NetworkReport{}};
    out.summary.size = sizeof(NetworkReport);
    if (out.modules.empty()) throw Error(TL_STATUS_INVALID_ARGUMENT, "the final set has no modules");
    detail::check(tl_network_criticality_report(detail::context_handle(ctx), evaluator.handle(),
                                                detail::params_handle(init), detail::params_handle(final_params),
                                                nullptr, 0, live.get(), &opts, out.modules.data(),
                                                out.modules.size(), &out.summary));
    return out;
}

// The PAC-Bayes bound from a network report, m = the samples the criticality was measured on;
// with n_test > 0 the held-out estimate from test_error beside it.
inline BoundReport pac_bayes_report(const NetworkReport& net, uint64_t m, double delta, double test_error = 0,
                                    uint64_t n_test = 0) {
    BoundReport out{};
    out.size = sizeof(BoundReport);
    detail::check(tl_pac_bayes_report(&net, m, delta, test_error, n_test, &out));
    return out;
}

// The metrics of module `module` rewound to (1 - alpha) init + alpha final, the rest at final.
inline std::vector<Metrics> rewind_curve(const Context& ctx, Evaluator& evaluator, const Params& init,
                                         const Params& final_params, Params& live, size_t module,
                                         const std::vector<double>& alphas) {
    std::vector<Metrics> out(alphas.size());
    detail::check(tl_rewind_curve(detail::context_handle(ctx), evaluator.handle(), detail::params_handle(init),
                                  detail::params_handle(final_params), live.get(), module, alphas.data(),
                                  alphas.size(), out.data()));
    return out;
}

// Block shuffle in place of n row-major c x h x w images held by `images`.
inline void block_shuffle(std::vector<float>& images, uint64_t n, uint64_t c, uint64_t h, uint64_t w,
                          uint64_t block, uint64_t seed) {
    if (images.size() != n * c * h * w)
        throw Error(TL_STATUS_SHAPE_MISMATCH, "the vector holds " + std::to_string(images.size()) + " floats, not " +
                                                  std::to_string(n * c * h * w));
    detail::check(tl_block_shuffle(images.data(), n, c, h, w, block, seed));
}

struct Agreement {
    // Both right, only A right, only B right, both wrong alike, both wrong differently.
    std::array<uint64_t, 5> counts;
    std::vector<uint8_t> category;  // per sample, 0..4 in that order
};

inline Agreement prediction_agreement(const std::vector<uint32_t>& a, const std::vector<uint32_t>& b,
                                      const std::vector<uint32_t>& truth) {
    if (a.size() != truth.size() || b.size() != truth.size())
        throw Error(TL_STATUS_SHAPE_MISMATCH, "label vectors of different lengths");
    Agreement out{{}, std::vector<uint8_t>(truth.size())};
    detail::check(tl_prediction_agreement(a.data(), b.data(), truth.data(), truth.size(), out.counts.data(),
                                          out.category.data()));
    return out;
}

// ------------------------------------------------------------------------------------------------
// The built-in CNN (docs/cnn.md): the architecture from a JSON specification, initial weights,
// training, an evaluator for every analysis, and module activations for CKA. Images are NCHW
// floats, one image of c x h x w per row.

// The learning-rate schedule of TrainOptions.
enum class LrSchedule : uint32_t {
    Constant = TL_LR_SCHEDULE_CONSTANT,
    Step = TL_LR_SCHEDULE_STEP,
    Cosine = TL_LR_SCHEDULE_COSINE,
};

// Options of Cnn::train and mlp_train: the defaults (tl_train_options_default), `size` set.
struct TrainOptions : tl_train_options {
    TrainOptions() : tl_train_options(tl_train_options_default()) { size = sizeof(tl_train_options); }
    TrainOptions& with_schedule(LrSchedule s) {
        schedule = static_cast<tl_lr_schedule>(s);
        return *this;
    }
};

namespace detail {
// Training's losses, one per epoch, from a C call that writes them.
template <class Train>
std::vector<double> train_epochs(const TrainOptions& opts, Train&& train) {
    std::vector<double> losses(static_cast<size_t>(opts.epochs));
    check(train(losses.data(), losses.size()));
    return losses;
}
}  // namespace detail

// Trains the built-in MLP's `params` (a set from mlp_init(sizes, ...)) in place on x (rows x
// sizes[0] floats, row major) with one label per row; returns each epoch's mean training loss.
inline std::vector<double> mlp_train(const std::vector<uint64_t>& sizes, Params& params, const std::vector<float>& x,
                                     const std::vector<uint32_t>& labels, const TrainOptions& opts = TrainOptions()) {
    if (sizes.empty() || x.size() != labels.size() * sizes[0])
        throw Error(TL_STATUS_SHAPE_MISMATCH,
                    "x holds " + std::to_string(x.size()) + " floats for " + std::to_string(labels.size()) + " labels");
    return detail::train_epochs(opts, [&](double* out, size_t n) {
        return tl_mlp_train(sizes.data(), sizes.size(), params.get(), x.data(), labels.data(), labels.size(), &opts,
                            out, n);
    });
}

// An image's shape: channels, height, width.
struct ImageShape {
    uint64_t c, h, w;
    uint64_t numel() const { return c * h * w; }
};

// A CNN's architecture (no weights). Move-only; freed by its destructor. Its methods may be called
// from several threads at once.
class Cnn {
  public:
    // The spec's errors throw with the parser's message, naming the layer and the field.
    explicit Cnn(const std::string& spec_json) { detail::check(tl_cnn_create(spec_json.c_str(), &cnn_)); }
    ~Cnn() { tl_cnn_destroy(cnn_); }
    Cnn(const Cnn&) = delete;
    Cnn& operator=(const Cnn&) = delete;
    Cnn(Cnn&& other) noexcept : cnn_(std::exchange(other.cnn_, nullptr)) {}
    Cnn& operator=(Cnn&& other) noexcept {
        if (this != &other) {
            tl_cnn_destroy(cnn_);
            cnn_ = std::exchange(other.cnn_, nullptr);
        }
        return *this;
    }

    size_t classes() const { return tl_cnn_classes(handle()); }
    ImageShape input_shape() const {
        ImageShape s{};
        detail::check(tl_cnn_input_shape(handle(), &s.c, &s.h, &s.w));
        return s;
    }
    size_t module_count() const { return tl_cnn_module_count(handle()); }
    std::string module_name(size_t module) const {
        const char* name = tl_cnn_module_name(handle(), module);
        if (!name)
            throw Error(TL_STATUS_NOT_FOUND, "module " + std::to_string(module) + " of a CNN of " +
                                                 std::to_string(module_count()) + " modules");
        return name;
    }
    std::vector<std::string> module_names() const {
        std::vector<std::string> names;
        for (size_t i = 0; i < module_count(); i++) names.push_back(module_name(i));
        return names;
    }
    // Features per image of the module's output (the columns of activations()).
    uint64_t module_width(size_t module) const {
        uint64_t out = 0;
        detail::check(tl_cnn_module_width(handle(), module, &out));
        return out;
    }

    // He-normal weights from `seed`, grouped into the CNN's modules, the spec in the metadata.
    Params init(uint64_t seed) const {
        tl_params* raw = nullptr;
        detail::check(tl_cnn_init(handle(), seed, &raw));
        return Params::adopt(raw);
    }

    // The CNN on these images and labels (copied) as an evaluator for every analysis.
    Evaluator evaluator(const std::vector<float>& x, const std::vector<uint32_t>& labels) const {
        check_images(x, labels.size());
        tl_evaluator* raw = nullptr;
        detail::check(tl_evaluator_cnn(handle(), x.data(), labels.data(), labels.size(), &raw));
        return Evaluator::adopt(raw);
    }

    // Trains `params` in place; returns each epoch's mean training loss.
    std::vector<double> train(Params& params, const std::vector<float>& x, const std::vector<uint32_t>& labels,
                              const TrainOptions& opts = TrainOptions()) const {
        check_images(x, labels.size());
        return detail::train_epochs(opts, [&](double* out, size_t n) {
            return tl_cnn_train(handle(), params.get(), x.data(), labels.data(), labels.size(), &opts, out, n);
        });
    }

    // The module's output for the images x: rows x module_width(module) floats, row major.
    std::vector<float> activations(const Params& params, const std::vector<float>& x, size_t module) const {
        const uint64_t rows = images_in(x);
        std::vector<float> out(static_cast<size_t>(rows * module_width(module)));
        detail::check(tl_cnn_activations(handle(), params.get(), x.data(), rows, module, out.data(), out.size()));
        return out;
    }

    tl_cnn* get() const noexcept { return cnn_; }
    tl_cnn* handle() const {
        if (!cnn_) throw Error(TL_STATUS_NULL_ARGUMENT, "use of a moved-from transferlens::Cnn");
        return cnn_;
    }

  private:
    uint64_t images_in(const std::vector<float>& x) const {
        const uint64_t per_image = input_shape().numel();
        if (x.size() % per_image != 0)
            throw Error(TL_STATUS_SHAPE_MISMATCH, "x holds " + std::to_string(x.size()) +
                                                      " floats, not a whole number of images of " +
                                                      std::to_string(per_image));
        return x.size() / per_image;
    }
    void check_images(const std::vector<float>& x, size_t labels) const {
        if (images_in(x) != labels)
            throw Error(TL_STATUS_SHAPE_MISMATCH, "x holds " + std::to_string(images_in(x)) + " images for " +
                                                      std::to_string(labels) + " labels");
    }
    tl_cnn* cnn_ = nullptr;
};

// ---------------------------------------------------------------------------------------------
// Permutation alignment and layer-wise connectivity (docs/align.md)

// Which tensor axes share one permutation of hidden units: inferred from a set (the built-in CNN
// from its metadata, else a chain of dense layers) or read from JSON.
class PermSpec {
  public:
    static PermSpec infer(const Params& set) {
        PermSpec s;
        detail::check(tl_perm_spec_infer(detail::params_handle(set), &s.spec_));
        return s;
    }
    static PermSpec from_json(const std::string& json) {
        PermSpec s;
        detail::check(tl_perm_spec_from_json(json.c_str(), &s.spec_));
        return s;
    }
    ~PermSpec() { tl_perm_spec_destroy(spec_); }
    PermSpec(const PermSpec&) = delete;
    PermSpec& operator=(const PermSpec&) = delete;
    PermSpec(PermSpec&& other) noexcept : spec_(std::exchange(other.spec_, nullptr)) {}
    PermSpec& operator=(PermSpec&& other) noexcept {
        if (this != &other) {
            tl_perm_spec_destroy(spec_);
            spec_ = std::exchange(other.spec_, nullptr);
        }
        return *this;
    }

    size_t group_count() const { return tl_perm_spec_group_count(handle()); }
    // The length of a flat permutation array: the units of all groups.
    size_t units() const { return tl_perm_spec_units(handle()); }
    uint64_t group_size(size_t group) const {
        uint64_t out = 0;
        detail::check(tl_perm_spec_group_size(handle(), group, &out));
        return out;
    }
    // Throws naming the group and tensor when the spec does not fit the set.
    void check(const Params& set) const { detail::check(tl_perm_spec_check(handle(), detail::params_handle(set))); }

    const tl_perm_spec* handle() const {
        if (!spec_) throw Error(TL_STATUS_NULL_ARGUMENT, "use of a moved-from transferlens::PermSpec");
        return spec_;
    }

  private:
    PermSpec() = default;
    tl_perm_spec* spec_ = nullptr;
};

// Weight matching: the flat permutation (group after group; perms[offset + i] is the unit of b
// that becomes unit i) that best matches a's weights.
struct Alignment {
    std::vector<uint64_t> perms;
    uint64_t passes = 0;
    bool converged = false;
};

inline Alignment align_weights(const PermSpec& spec, const Params& a, const Params& b, uint64_t seed = 0,
                               uint64_t max_passes = 100) {
    tl_align_options opts = tl_align_options_default();
    opts.seed = seed;
    opts.max_passes = max_passes;
    Alignment out;
    out.perms.resize(spec.units());
    int32_t converged = 0;
    detail::check(tl_align_weights(spec.handle(), detail::params_handle(a), detail::params_handle(b), &opts,
                                   out.perms.data(), out.perms.size(), &out.passes, &converged));
    out.converged = converged == 1;
    return out;
}

// Activation matching on one observations x units matrix per group and model.
inline std::vector<uint64_t> align_activations(const Context& ctx, const PermSpec& spec,
                                               const std::vector<MatrixView>& acts_a,
                                               const std::vector<MatrixView>& acts_b) {
    if (acts_a.size() != acts_b.size())
        throw Error(TL_STATUS_SHAPE_MISMATCH, "acts_a and acts_b hold different numbers of groups");
    const auto ra = detail::raw_views(acts_a), rb = detail::raw_views(acts_b);
    std::vector<uint64_t> perms(spec.units());
    detail::check(tl_align_activations(detail::context_handle(ctx), spec.handle(), ra.data(), rb.data(), ra.size(),
                                       perms.data(), perms.size()));
    return perms;
}

// b rewritten in the unit order perms (as align_weights gives it): a new set.
inline Params align_apply(const PermSpec& spec, const Params& b, const std::vector<uint64_t>& perms) {
    tl_params* out = nullptr;
    detail::check(tl_align_apply(spec.handle(), detail::params_handle(b), perms.data(), perms.size(), &out));
    return Params::adopt(out);
}

// The layer-wise curve: modules first_module .. first_module + module_count of a move to b, the
// rest held at a; each point is written into live.
inline std::vector<Metrics> layerwise_curve(const Context& ctx, Evaluator& evaluator, const Params& a,
                                            const Params& b, Params& live, const std::vector<double>& lambdas,
                                            size_t first_module, size_t module_count) {
    std::vector<Metrics> out(lambdas.size());
    detail::check(tl_layerwise_curve(detail::context_handle(ctx), evaluator.handle(), detail::params_handle(a),
                                     detail::params_handle(b), live.get(), lambdas.data(), lambdas.size(),
                                     first_module, module_count, out.data()));
    return out;
}

}  // namespace transferlens

#endif  // TRANSFERLENS_HPP
