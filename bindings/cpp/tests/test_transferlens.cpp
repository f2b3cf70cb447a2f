// Tests of bindings/cpp/transferlens.hpp: every capability of the C ABI through the C++ layer,
// values against a plain f64 reference written here. Built by tests/bindings_cpp.rs with
// -Wall -Wextra -Werror -fsanitize=address,undefined; exits non-zero on the first failure.
#include "transferlens.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include <sys/stat.h>
#include <unistd.h>

namespace tl = transferlens;

static int g_checks = 0;
#define CHECK(cond)                                                                   \
    do {                                                                              \
        ++g_checks;                                                                   \
        if (!(cond)) {                                                                \
            std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            std::exit(1);                                                             \
        }                                                                             \
    } while (0)
#define CHECK_CLOSE(got, want, tol)                                                                       \
    do {                                                                                                  \
        ++g_checks;                                                                                       \
        double g_ = (got), w_ = (want);                                                                   \
        if (!(std::fabs(g_ - w_) <= (tol) * std::fmax(1.0, std::fabs(w_)))) {                             \
            std::fprintf(stderr, "%s:%d: %s = %.17g, expected %.17g\n", __FILE__, __LINE__, #got, g_, w_); \
            std::exit(1);                                                                                 \
        }                                                                                                 \
    } while (0)
// The call must throw tl::Error with the given status and a non-empty message.
#define CHECK_THROWS(expr, expected)                                                                             \
    do {                                                                                                         \
        ++g_checks;                                                                                              \
        bool thrown_ = false;                                                                                    \
        try {                                                                                                    \
            (void)(expr);                                                                                        \
        } catch (const tl::Error& e_) {                                                                          \
            thrown_ = true;                                                                                      \
            if (e_.status() != (expected) || e_.message().empty()) {                                             \
                std::fprintf(stderr, "%s:%d: %s threw %s (%s), expected %s\n", __FILE__, __LINE__, #expr,        \
                             e_.status_name(), e_.message().c_str(), tl::status_name(expected));                 \
                std::exit(1);                                                                                    \
            }                                                                                                    \
        }                                                                                                        \
        if (!thrown_) {                                                                                          \
            std::fprintf(stderr, "%s:%d: %s did not throw\n", __FILE__, __LINE__, #expr);                        \
            std::exit(1);                                                                                        \
        }                                                                                                        \
    } while (0)

// splitmix64 normals: reproducible data, never zeros.
static uint64_t g_rng = 7;
static double uniform() {
    uint64_t z = (g_rng += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return (static_cast<double>(z >> 11) + 0.5) / 9007199254740992.0;
}
static double normal() { return std::sqrt(-2.0 * std::log(uniform())) * std::cos(6.283185307179586 * uniform()); }

// Row-major n x p in f64.
struct Dense {
    size_t n, p;
    std::vector<double> v;
    double at(size_t r, size_t c) const { return v[r * p + c]; }
};
static Dense random_dense(size_t n, size_t p) {
    Dense d{n, p, std::vector<double>(n * p)};
    for (auto& x : d.v) x = normal();
    return d;
}
// A layer correlated with x: x W + noise.
static Dense mix(const Dense& x, size_t q, double noise) {
    std::vector<double> w(x.p * q);
    for (auto& a : w) a = normal();
    Dense y{x.n, q, std::vector<double>(x.n * q)};
    for (size_t r = 0; r < x.n; r++)
        for (size_t j = 0; j < q; j++) {
            double s = 0;
            for (size_t c = 0; c < x.p; c++) s += x.at(r, c) * w[c * q + j];
            y.v[r * q + j] = s + noise * normal();
        }
    return y;
}

// Reference HSIC from n x n Grams: biased tr(HKH HLH); debiased the U-statistic of Song et al.
static std::vector<double> gram(const Dense& x) {
    std::vector<double> k(x.n * x.n);
    for (size_t i = 0; i < x.n; i++)
        for (size_t j = 0; j < x.n; j++) {
            double s = 0;
            for (size_t c = 0; c < x.p; c++) s += x.at(i, c) * x.at(j, c);
            k[i * x.n + j] = s;
        }
    return k;
}
static double ref_hsic(const std::vector<double>& k, const std::vector<double>& l, size_t n, bool debiased) {
    const double dn = static_cast<double>(n);
    if (!debiased) {
        auto center = [&](const std::vector<double>& g) {
            std::vector<double> row(n, 0), col(n, 0), out(n * n);
            double all = 0;
            for (size_t i = 0; i < n; i++)
                for (size_t j = 0; j < n; j++) row[i] += g[i * n + j] / dn, col[j] += g[i * n + j] / dn,
                                                                 all += g[i * n + j] / (dn * dn);
            for (size_t i = 0; i < n; i++)
                for (size_t j = 0; j < n; j++) out[i * n + j] = g[i * n + j] - row[i] - col[j] + all;
            return out;
        };
        auto hk = center(k), hl = center(l);
        double s = 0;
        for (size_t i = 0; i < n * n; i++) s += hk[i] * hl[i];
        return s;
    }
    std::vector<double> kz = k, lz = l;
    for (size_t i = 0; i < n; i++) kz[i * n + i] = lz[i * n + i] = 0;
    double tr = 0, sk = 0, sl = 0, kl = 0;
    for (size_t i = 0; i < n; i++) {
        double ki = 0, li = 0;
        for (size_t j = 0; j < n; j++) {
            tr += kz[i * n + j] * lz[i * n + j];
            ki += kz[i * n + j];
            li += lz[i * n + j];
        }
        sk += ki;
        sl += li;
        kl += ki * li;
    }
    return (tr + sk * sl / ((dn - 1) * (dn - 2)) - 2.0 / (dn - 2) * kl) / (dn * (dn - 3));
}
static double ref_cka(const Dense& x, const Dense& y, bool debiased) {
    auto k = gram(x), l = gram(y);
    return ref_hsic(k, l, x.n, debiased) / std::sqrt(ref_hsic(k, k, x.n, debiased) * ref_hsic(l, l, x.n, debiased));
}

static std::vector<float> to_f32(const Dense& d) { return std::vector<float>(d.v.begin(), d.v.end()); }
// The values the library sees once the data is stored as f32.
static Dense rounded_f32(const Dense& d) {
    Dense r = d;
    for (auto& x : r.v) x = static_cast<float>(x);
    return r;
}

// IEEE half and bfloat16 bit patterns (round to nearest even), and back, for the 16-bit paths.
static uint16_t f16_bits(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u;
    int32_t exp = static_cast<int32_t>((x >> 23) & 0xff) - 127 + 15;
    uint32_t mant = x & 0x7fffffu;
    if (exp <= 0) {  // subnormal half (the test data is far from overflow)
        if (exp < -10) return static_cast<uint16_t>(sign);
        mant |= 0x800000u;
        const uint32_t shift = static_cast<uint32_t>(14 - exp);
        uint32_t half = mant >> shift;
        const uint32_t rest = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rest > mid || (rest == mid && (half & 1))) half++;
        return static_cast<uint16_t>(sign | half);
    }
    uint32_t half = (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
    const uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (half & 1))) half++;
    return static_cast<uint16_t>(sign | half);
}
static double f16_value(uint16_t h) {
    const int exp = (h >> 10) & 0x1f;
    const double mant = h & 0x3ff;
    const double v = exp == 0 ? std::ldexp(mant, -24) : std::ldexp(1024.0 + mant, exp - 25);
    return (h & 0x8000) ? -v : v;
}
static uint16_t bf16_bits(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    x += 0x7fffu + ((x >> 16) & 1u);
    return static_cast<uint16_t>(x >> 16);
}
static double bf16_value(uint16_t b) {
    const uint32_t x = static_cast<uint32_t>(b) << 16;
    float f;
    std::memcpy(&f, &x, 4);
    return f;
}

static void test_basics() {
    const std::string want = std::to_string(TL_VERSION_MAJOR) + "." + std::to_string(TL_VERSION_MINOR) + "." +
                             std::to_string(TL_VERSION_PATCH);
    CHECK(tl::version() == want);
    CHECK(tl::abi_version() == TL_ABI_VERSION);
    CHECK(tl::abi_matches());
    CHECK(std::string(tl::status_name(TL_STATUS_DEGENERATE_INPUT)) == "TL_STATUS_DEGENERATE_INPUT");
    CHECK(std::string(tl::status_name(static_cast<tl_status>(99))) == "TL_STATUS_UNKNOWN");

    const tl::Error e(TL_STATUS_SHAPE_MISMATCH, "rows differ");
    CHECK(e.status() == TL_STATUS_SHAPE_MISMATCH);
    CHECK(std::string(e.what()) == "TL_STATUS_SHAPE_MISMATCH: rows differ");
}

static void test_context() {
    tl::Context ctx = tl::Context::cpu();
    CHECK(ctx.get() != nullptr);
    CHECK(ctx.backend() == tl::Backend::Cpu);

    tl::Context moved(std::move(ctx));
    CHECK(ctx.get() == nullptr);  // NOLINT(bugprone-use-after-move): the moved-from state is defined
    CHECK(moved.backend() == tl::Backend::Cpu);
    CHECK_THROWS(ctx.backend(), TL_STATUS_NULL_ARGUMENT);

    tl::Context other = tl::Context::cpu();
    other = std::move(moved);  // frees other's first context (ASan reports a leak otherwise)
    CHECK(other.backend() == tl::Backend::Cpu);

    tl::Context autod;  // AUTO resolves to a concrete backend
    CHECK(autod.backend() == tl::Backend::Cpu || autod.backend() == tl::Backend::Cuda);

    // CUDA asked for explicitly: a context where a device exists, else DEVICE_UNAVAILABLE.
    try {
        tl::Context cuda(tl::Backend::Cuda, 0);
        CHECK(cuda.backend() == tl::Backend::Cuda);
    } catch (const tl::Error& e) {
        CHECK(e.status() == TL_STATUS_DEVICE_UNAVAILABLE);
        CHECK(!e.message().empty());
    }
    CHECK_THROWS(tl::Context(static_cast<tl::Backend>(7)), TL_STATUS_INVALID_ARGUMENT);

    tl_context* raw = tl::Context::cpu().release();  // ownership moves to the caller
    CHECK(raw != nullptr);
    tl_context_destroy(raw);
}

static void test_cka_linear() {
    const tl::Context ctx = tl::Context::cpu();
    // Awkward sizes: few samples, odd widths, more features than samples.
    const size_t shapes[][3] = {{5, 1, 3}, {17, 7, 5}, {9, 33, 2}, {64, 12, 12}};
    for (const auto& s : shapes) {
        const Dense x = random_dense(s[0], s[1]);
        const Dense y = mix(x, s[2], 0.5);
        for (bool debiased : {false, true}) {
            const auto est = debiased ? tl::Estimator::Debiased : tl::Estimator::Biased;
            // f64: the reference to rounding.
            const double r64 = ctx.cka_linear(tl::MatrixView(x.v, x.n, x.p), tl::MatrixView(y.v, y.n, y.p), est);
            CHECK_CLOSE(r64, ref_cka(x, y, debiased), 1e-10);
            // f32: dtype deduced from float.
            const auto xf = to_f32(x), yf = to_f32(y);
            const double r32 = ctx.cka_linear(tl::MatrixView(xf, x.n, x.p), tl::MatrixView(yf, y.n, y.p), est);
            CHECK_CLOSE(r32, ref_cka(rounded_f32(x), rounded_f32(y), debiased), 1e-5);
        }
    }
    // Known values: CKA(X, X) = 1; invariant to isotropic scaling and an offset.
    const Dense x = random_dense(11, 4);
    Dense z = x;
    for (auto& v : z.v) v = 3.0 * v + 100.0;
    CHECK_CLOSE(ctx.cka_linear(tl::MatrixView(x.v, 11, 4), tl::MatrixView(x.v, 11, 4), tl::Estimator::Biased), 1.0,
                1e-12);
    CHECK_CLOSE(ctx.cka_linear(tl::MatrixView(x.v, 11, 4), tl::MatrixView(z.v, 11, 4), tl::Estimator::Biased), 1.0,
                1e-10);
}

static void test_views() {
    const tl::Context ctx = tl::Context::cpu();
    const Dense x = random_dense(13, 5), y = mix(x, 3, 0.7);
    const double want = ref_cka(x, y, true);

    // A row stride: x stored inside a wider buffer (8 columns, the first 5 used).
    std::vector<double> wide(13 * 8, 1e300);  // padding that would poison the result if read
    for (size_t r = 0; r < 13; r++)
        for (size_t c = 0; c < 5; c++) wide[r * 8 + c] = x.at(r, c);
    CHECK_CLOSE(ctx.cka_linear(tl::MatrixView(wide, 13, 5, 8), tl::MatrixView(y.v, 13, 3), tl::Estimator::Debiased),
                want, 1e-10);
    // Raw pointers and a row range of a view.
    std::vector<double> tall(2 * 13 * 5);
    std::copy(x.v.begin(), x.v.end(), tall.begin() + 13 * 5);
    const tl::MatrixView lower = tl::MatrixView(tall.data(), 26, 5).rows(13, 13);
    CHECK(lower.rows() == 13 && lower.cols() == 5 && lower.dtype() == tl::DType::F64);
    CHECK_CLOSE(ctx.cka_linear(lower, tl::MatrixView(y.v.data(), 13, 3), tl::Estimator::Debiased), want, 1e-10);
    CHECK_THROWS(tl::MatrixView(tall.data(), 26, 5).rows(20, 7), TL_STATUS_INVALID_ARGUMENT);

    // f16 and bf16 as bit patterns with an explicit dtype; the reference sees the rounded values.
    for (tl::DType dt : {tl::DType::F16, tl::DType::BF16}) {
        std::vector<uint16_t> xb(x.v.size()), yb(y.v.size());
        Dense xr = x, yr = y;
        for (size_t i = 0; i < xb.size(); i++) {
            xb[i] = dt == tl::DType::F16 ? f16_bits(static_cast<float>(x.v[i])) : bf16_bits(static_cast<float>(x.v[i]));
            xr.v[i] = dt == tl::DType::F16 ? f16_value(xb[i]) : bf16_value(xb[i]);
        }
        for (size_t i = 0; i < yb.size(); i++) {
            yb[i] = dt == tl::DType::F16 ? f16_bits(static_cast<float>(y.v[i])) : bf16_bits(static_cast<float>(y.v[i]));
            yr.v[i] = dt == tl::DType::F16 ? f16_value(yb[i]) : bf16_value(yb[i]);
        }
        const double got = ctx.cka_linear(tl::MatrixView(xb.data(), dt, 13, 5), tl::MatrixView(yb.data(), dt, 13, 3),
                                          tl::Estimator::Debiased);
        CHECK_CLOSE(got, ref_cka(xr, yr, true), 1e-5);
    }
    std::vector<uint16_t> bits(10, 0x3c00);
    CHECK_THROWS(tl::MatrixView(bits.data(), tl::DType::F32, 5, 2), TL_STATUS_INVALID_ARGUMENT);

    // A container shorter than the view: refused before the library could read past it.
    std::vector<float> short_buf(11);
    CHECK_THROWS(tl::MatrixView(short_buf, 4, 3), TL_STATUS_SHAPE_MISMATCH);
    CHECK_THROWS(tl::MatrixView(short_buf, 3, 3, 5), TL_STATUS_SHAPE_MISMATCH);  // spans 2 * 5 + 3
}

static void test_errors() {
    const tl::Context ctx = tl::Context::cpu();
    const Dense x = random_dense(3, 2), y = random_dense(3, 2);
    // Three samples are too few for the debiased estimator.
    CHECK_THROWS(ctx.cka_linear(tl::MatrixView(x.v, 3, 2), tl::MatrixView(y.v, 3, 2), tl::Estimator::Debiased),
                 TL_STATUS_DEGENERATE_INPUT);
    Dense bad = random_dense(6, 2);
    bad.v[5] = NAN;
    const Dense ok = random_dense(6, 2);
    CHECK_THROWS(ctx.cka_linear(tl::MatrixView(bad.v, 6, 2), tl::MatrixView(ok.v, 6, 2), tl::Estimator::Biased),
                 TL_STATUS_NON_FINITE);
    CHECK_THROWS(ctx.cka_linear(tl::MatrixView(ok.v, 6, 2), tl::MatrixView(y.v, 3, 2), tl::Estimator::Biased),
                 TL_STATUS_SHAPE_MISMATCH);
    CHECK_THROWS(ctx.cka_linear(tl::MatrixView(ok.v, 6, 2), tl::MatrixView(ok.v, 6, 2), static_cast<tl::Estimator>(9)),
                 TL_STATUS_INVALID_ARGUMENT);
    std::vector<double> constant(12, 2.5);  // no variance
    CHECK_THROWS(ctx.cka_linear(tl::MatrixView(constant, 6, 2), tl::MatrixView(ok.v, 6, 2), tl::Estimator::Biased),
                 TL_STATUS_DEGENERATE_INPUT);
    // Device memory handed to a CPU context is refused with an error, never dereferenced.
    try {
        static const float fake = 0.0f;
        const auto dev = tl::MatrixView::on_device(&fake, tl::DType::F32, 0, 6, 2);
        CHECK(dev.raw().device == 0 && dev.rows() == 6);
        ctx.cka_linear(dev, tl::MatrixView(ok.v, 6, 2), tl::Estimator::Biased);
        CHECK(false);
    } catch (const tl::Error& e) {
        CHECK(e.status() != TL_STATUS_OK && !e.message().empty());
    }
    // The message is the library's: it names the problem.
    try {
        ctx.cka_linear(tl::MatrixView(bad.v, 6, 2), tl::MatrixView(ok.v, 6, 2), tl::Estimator::Biased);
        CHECK(false);
    } catch (const tl::Error& e) {
        CHECK(std::string(e.what()).find("TL_STATUS_NON_FINITE: ") == 0);
        CHECK(e.message().find("NaN") != std::string::npos || e.message().find("non-finite") != std::string::npos ||
              e.message().find("finite") != std::string::npos);
    }
}

static void test_cka_matrix() {
    const tl::Context ctx = tl::Context::cpu();
    const Dense a = random_dense(21, 6), b = mix(a, 4, 0.3), c = mix(b, 9, 1.0);
    const Dense d = mix(a, 3, 2.0), e = random_dense(21, 5);
    const std::vector<const Dense*> xs{&a, &b, &c}, ys{&d, &e};
    std::vector<tl::MatrixView> vx, vy;
    for (auto* m : xs) vx.emplace_back(m->v, m->n, m->p);
    for (auto* m : ys) vy.emplace_back(m->v, m->n, m->p);
    for (bool debiased : {false, true}) {
        const auto got = ctx.cka_matrix(vx, vy, debiased ? tl::Estimator::Debiased : tl::Estimator::Biased);
        CHECK(got.nx == 3 && got.ny == 2 && got.values.size() == 6);
        for (size_t i = 0; i < 3; i++)
            for (size_t j = 0; j < 2; j++) CHECK_CLOSE(got.at(i, j), ref_cka(*xs[i], *ys[j], debiased), 1e-10);
    }
    CHECK_THROWS(ctx.cka_matrix({}, vy, tl::Estimator::Biased), TL_STATUS_INVALID_ARGUMENT);
}

static void test_accumulator() {
    const tl::Context ctx = tl::Context::cpu();
    const size_t n = 37;
    const Dense x0 = random_dense(n, 5), x1 = mix(x0, 3, 0.4), y0 = mix(x0, 4, 1.0);
    // Offsets that would cancel catastrophically without the shift.
    Dense x1o = x1;
    for (auto& v : x1o.v) v += 1000.0;
    for (bool debiased : {false, true}) {
        const auto est = debiased ? tl::Estimator::Debiased : tl::Estimator::Biased;
        // Uneven batches, one of a single row, through row ranges of the full views.
        const tl::MatrixView fx0(x0.v, n, 5), fx1(x1o.v, n, 3), fy0(y0.v, n, 4);
        tl::CkaAccumulator acc(ctx, 2, 1, est);
        CHECK(acc.nx() == 2 && acc.ny() == 1);
        CHECK(acc.state_size().first == 0 && acc.state_size().second == 0);
        const size_t cuts[] = {0, 10, 11, 30, n};
        for (size_t k = 0; k + 1 < 5; k++) {
            const size_t lo = cuts[k], len = cuts[k + 1] - cuts[k];
            acc.update({fx0.rows(lo, len), fx1.rows(lo, len)}, {fy0.rows(lo, len)});
        }
        const auto got = acc.result();
        CHECK_CLOSE(got.at(0, 0), ref_cka(x0, y0, debiased), 1e-9);
        // CKA ignores offsets: the reference runs on the data without them (the Gram formulas
        // themselves would lose precision to the offset), the library must not lose it either.
        CHECK_CLOSE(got.at(1, 0), ref_cka(x1, y0, debiased), 1e-9);

        // Merge: two halves give the whole.
        tl::CkaAccumulator a(ctx, 2, 1, est), b(ctx, 2, 1, est);
        a.update({fx0.rows(0, 20), fx1.rows(0, 20)}, {fy0.rows(0, 20)});
        b.update({fx0.rows(20, n - 20), fx1.rows(20, n - 20)}, {fy0.rows(20, n - 20)});
        a.merge(b);
        CHECK_CLOSE(a.result().at(1, 0), got.at(1, 0), 1e-10);

        // All-reduce protocol: b rebases to a's shift, moments are summed, both import.
        tl::CkaAccumulator p(ctx, 2, 1, est), q(ctx, 2, 1, est);
        p.update({fx0.rows(0, 15), fx1.rows(0, 15)}, {fy0.rows(0, 15)});
        q.update({fx0.rows(15, n - 15), fx1.rows(15, n - 15)}, {fy0.rows(15, n - 15)});
        const auto sp = p.export_state();
        CHECK(sp.shift.size() == p.state_size().first && sp.moments.size() == p.state_size().second);
        CHECK(sp.moments[0] == 15.0);  // the sample count comes first
        q.rebase(sp.shift);
        auto sq = q.export_state();
        tl::CkaAccumulator::State summed{sp.shift, sp.moments};
        for (size_t i = 0; i < summed.moments.size(); i++) summed.moments[i] += sq.moments[i];
        // A fresh accumulator receives the reduced state after set_widths.
        tl::CkaAccumulator fresh(ctx, 2, 1, est);
        fresh.set_widths({5, 3, 4});
        fresh.import_state(summed);
        CHECK_CLOSE(fresh.result().at(0, 0), got.at(0, 0), 1e-9);
        CHECK_CLOSE(fresh.result().at(1, 0), got.at(1, 0), 1e-9);
    }

    // Errors: layer counts, feature counts, widths, a short state.
    tl::CkaAccumulator acc(ctx, 1, 1, tl::Estimator::Biased);
    const Dense x = random_dense(8, 3), y = random_dense(8, 2), z = random_dense(8, 4);
    CHECK_THROWS(acc.result(), TL_STATUS_DEGENERATE_INPUT);
    CHECK_THROWS(acc.update({tl::MatrixView(x.v, 8, 3), tl::MatrixView(x.v, 8, 3)}, {tl::MatrixView(y.v, 8, 2)}),
                 TL_STATUS_SHAPE_MISMATCH);
    acc.update({tl::MatrixView(x.v, 8, 3)}, {tl::MatrixView(y.v, 8, 2)});
    CHECK_THROWS(acc.update({tl::MatrixView(z.v, 8, 4)}, {tl::MatrixView(y.v, 8, 2)}), TL_STATUS_SHAPE_MISMATCH);
    CHECK_THROWS(acc.set_widths({3, 2}), TL_STATUS_INVALID_ARGUMENT);  // it has seen data
    CHECK_THROWS(acc.rebase({1.0}), TL_STATUS_SHAPE_MISMATCH);
    tl::CkaAccumulator::State short_state{{0.0}, {1.0}};
    CHECK_THROWS(acc.import_state(short_state), TL_STATUS_SHAPE_MISMATCH);
    tl::CkaAccumulator other(ctx, 1, 1, tl::Estimator::Biased);
    other.update({tl::MatrixView(z.v, 8, 4)}, {tl::MatrixView(y.v, 8, 2)});
    CHECK_THROWS(acc.merge(other), TL_STATUS_SHAPE_MISMATCH);
    CHECK_THROWS(tl::CkaAccumulator(ctx, 0, 1, tl::Estimator::Biased), TL_STATUS_INVALID_ARGUMENT);

    // Moves: the moved-to object owns the handle, the moved-from one refuses to be used.
    tl::CkaAccumulator moved(std::move(acc));
    CHECK(acc.get() == nullptr);  // NOLINT(bugprone-use-after-move)
    CHECK_THROWS(acc.result(), TL_STATUS_NULL_ARGUMENT);
    CHECK(moved.result().values.size() == 1);
    moved = std::move(other);  // frees moved's first handle
    CHECK(moved.result().values.size() == 1);

    // The accumulator outlives its context.
    tl::CkaAccumulator* keep = nullptr;
    {
        tl::Context short_lived = tl::Context::cpu();
        keep = new tl::CkaAccumulator(short_lived, 1, 1, tl::Estimator::Biased);
    }
    keep->update({tl::MatrixView(x.v, 8, 3)}, {tl::MatrixView(y.v, 8, 2)});
    CHECK_CLOSE(keep->result().at(0, 0), ref_cka(x, y, false), 1e-10);
    delete keep;
}

// ---- parameter sets ----------------------------------------------------------------------------

// A small model: conv1.weight F32 [2, 3], layer1.0.weight F64 [4], layer1.1.bias F32 [2],
// fc.bias F64 [3], and an I64 counter the library carries through untouched.
struct Model {
    std::vector<float> conv = std::vector<float>(6);
    std::vector<double> l10 = std::vector<double>(4);
    std::vector<float> l11 = std::vector<float>(2);
    std::vector<double> fc = std::vector<double>(3);
};
static Model random_model() {
    Model m;
    for (auto& x : m.conv) x = static_cast<float>(normal());
    for (auto& x : m.l10) x = normal();
    for (auto& x : m.l11) x = static_cast<float>(normal());
    for (auto& x : m.fc) x = normal();
    return m;
}
// The model's values in f64, per module (conv1, layer1, fc).
static std::vector<std::vector<double>> modules_of(const Model& m) {
    std::vector<double> l1(m.l10.begin(), m.l10.end());
    l1.insert(l1.end(), m.l11.begin(), m.l11.end());
    return {std::vector<double>(m.conv.begin(), m.conv.end()), l1, m.fc};
}

// Writes the model as a safetensors file: 8-byte little-endian header length, JSON, data.
static void write_safetensors(const std::string& path, const Model& m) {
    std::string data;
    auto append = [&data](const void* p, size_t n) { data.append(static_cast<const char*>(p), n); };
    std::string json = "{\"__metadata__\":{\"format\":\"pt\"}";
    auto entry = [&](const char* name, const char* dtype, const std::string& shape, const void* p, size_t n) {
        json += std::string(",\"") + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":[" + shape +
                "],\"data_offsets\":[" + std::to_string(data.size()) + "," + std::to_string(data.size() + n) + "]}";
        append(p, n);
    };
    const int64_t count = 42;
    entry("conv1.weight", "F32", "2,3", m.conv.data(), 6 * 4);
    entry("layer1.0.weight", "F64", "4", m.l10.data(), 4 * 8);
    entry("bn.num_batches_tracked", "I64", "", &count, 8);
    entry("layer1.1.bias", "F32", "2", m.l11.data(), 2 * 4);
    entry("fc.bias", "F64", "3", m.fc.data(), 3 * 8);
    json += "}";
    std::FILE* f = std::fopen(path.c_str(), "wb");
    CHECK(f != nullptr);
    unsigned char len[8];
    for (int i = 0; i < 8; i++) len[i] = static_cast<unsigned char>(static_cast<uint64_t>(json.size()) >> (8 * i));
    CHECK(std::fwrite(len, 1, 8, f) == 8);
    CHECK(std::fwrite(json.data(), 1, json.size(), f) == json.size());
    CHECK(std::fwrite(data.data(), 1, data.size(), f) == data.size());
    CHECK(std::fclose(f) == 0);
}

// Reads the whole file at `path` into `bytes`; false when it cannot be read.
static bool read_file(const std::string& path, std::string& bytes) {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (f == nullptr) return false;
    bytes.clear();
    char buffer[4096];
    size_t got = 0;
    while ((got = std::fread(buffer, 1, sizeof buffer, f)) > 0) bytes.append(buffer, got);
    return std::fclose(f) == 0;
}

// Whether this process maps the file at `path`: a line of /proc/self/maps ends with it (Linux).
static bool maps_file(const std::string& path) {
    std::string maps;
    return read_file("/proc/self/maps", maps) && maps.find(" " + path + "\n") != std::string::npos;
}

static std::string scratch_path(const std::string& name) {
    const char* tmp = std::getenv("TMPDIR");
    return std::string(tmp && *tmp ? tmp : "/tmp") + "/tl-cpp-params-" + std::to_string(static_cast<long>(getpid())) +
           "-" + name;
}

static void test_params() {
    const tl::Context ctx = tl::Context::cpu();
    g_rng = 99;
    Model ma = random_model(), mb = random_model();
    const std::string pa = scratch_path("a.safetensors"), pb = scratch_path("b.safetensors");
    write_safetensors(pa, ma);
    write_safetensors(pb, mb);
    tl::Params a = tl::Params::load(ctx, pa), b = tl::Params::load(ctx, pb);
    CHECK(a.tensor_count() == 5);
    CHECK(a.module_count() == 3);  // bn holds only the I64 counter
    CHECK((a.module_names() == std::vector<std::string>{"conv1", "layer1", "fc"}));
    CHECK(a.find_module("fc") == 2);
    CHECK_THROWS(a.find_module("bn"), TL_STATUS_NOT_FOUND);
    CHECK_THROWS(a.module_name(3), TL_STATUS_NOT_FOUND);

    // f64 references per module.
    const auto ra = modules_of(ma), rb = modules_of(mb);
    double dd_total = 0, aa_total = 0;
    std::vector<double> dd(3), aa(3), bb(3), ab(3);
    for (size_t k = 0; k < 3; k++) {
        for (size_t i = 0; i < ra[k].size(); i++) {
            dd[k] += (ra[k][i] - rb[k][i]) * (ra[k][i] - rb[k][i]);
            aa[k] += ra[k][i] * ra[k][i];
            bb[k] += rb[k][i] * rb[k][i];
            ab[k] += ra[k][i] * rb[k][i];
        }
        dd_total += dd[k];
        aa_total += aa[k];
    }
    const tl::ModuleValues d = a.distance(ctx, b);
    CHECK(d.per_module.size() == 3);
    for (size_t k = 0; k < 3; k++) CHECK_CLOSE(d.per_module[k], std::sqrt(dd[k]), 1e-12);
    CHECK_CLOSE(d.total, std::sqrt(dd_total), 1e-12);
    const tl::ModuleValues n = a.norms(ctx);
    for (size_t k = 0; k < 3; k++) CHECK_CLOSE(n.per_module[k], std::sqrt(aa[k]), 1e-12);
    CHECK_CLOSE(n.total, std::sqrt(aa_total), 1e-12);
    const tl::Comparison c = a.compare(ctx, b);
    for (size_t k = 0; k < 3; k++) {
        CHECK(c.per_module[k].numel == ra[k].size());
        CHECK_CLOSE(c.per_module[k].distance, std::sqrt(dd[k]), 1e-12);
        CHECK_CLOSE(c.per_module[k].norm_b, std::sqrt(bb[k]), 1e-12);
        CHECK_CLOSE(c.per_module[k].relative, std::sqrt(dd[k] / aa[k]), 1e-12);
        CHECK_CLOSE(c.per_module[k].cosine, ab[k] / std::sqrt(aa[k] * bb[k]), 1e-12);
    }
    CHECK(c.total.numel == 15);
    CHECK_CLOSE(c.total.distance, std::sqrt(dd_total), 1e-12);

    // Interpolation into a clone, endpoints bit for bit; the carried-through counter is no weight.
    tl::Params out = a.clone();
    for (double lambda : {-0.5, 0.3, 2.0}) {
        out.interpolate(ctx, a, b, lambda);
        const auto conv = out.tensor_data("conv1.weight").values<float>();
        for (size_t i = 0; i < 6; i++)
            CHECK_CLOSE(conv[i], (1 - lambda) * ma.conv[i] + lambda * mb.conv[i], 1e-6);
        const auto fc = out.tensor_data("fc.bias").values<double>();
        for (size_t i = 0; i < 3; i++) CHECK_CLOSE(fc[i], (1 - lambda) * ma.fc[i] + lambda * mb.fc[i], 1e-14);
    }
    CHECK(out.interpolate(ctx, a, b, 1.0).tensor_data("conv1.weight").values<float>() == mb.conv);
    CHECK(out.interpolate(ctx, a, b, 0.0).tensor_data("layer1.0.weight").values<double>() == ma.l10);
    CHECK_THROWS(out.tensor_data("bn.num_batches_tracked"), TL_STATUS_UNSUPPORTED_DTYPE);
    CHECK_THROWS(out.tensor_data("nope"), TL_STATUS_NOT_FOUND);
    CHECK_THROWS(out.tensor_data("fc.bias").values<float>(), TL_STATUS_UNSUPPORTED_DTYPE);
    CHECK_THROWS(out.interpolate(ctx, a, b, INFINITY), TL_STATUS_INVALID_ARGUMENT);

    // Per module: layer1 halfway, the rest at b; rewinding fc to a, the rest at b.
    out.interpolate_module(ctx, a, b, 0.5, a.find_module("layer1"));
    CHECK(out.tensor_data("conv1.weight").values<float>() == mb.conv);
    const auto l10 = out.tensor_data("layer1.0.weight").values<double>();
    for (size_t i = 0; i < 4; i++) CHECK_CLOSE(l10[i], 0.5 * ma.l10[i] + 0.5 * mb.l10[i], 1e-14);
    out.rewind(ctx, a, b, 2, 0.0);
    CHECK(out.tensor_data("fc.bias").values<double>() == ma.fc);
    CHECK(out.tensor_data("layer1.0.weight").values<double>() == mb.l10);
    CHECK_THROWS(out.rewind(ctx, a, b, 3, 0.5), TL_STATUS_NOT_FOUND);
    CHECK_THROWS(out.interpolate_module(ctx, a, b, 0.5, 7), TL_STATUS_NOT_FOUND);

    // Save and load back: the same weights.
    out.interpolate(ctx, a, b, 0.3);
    const std::string pm = scratch_path("mid.safetensors");
    out.save(pm);
    const tl::Params mid = tl::Params::load(ctx, pm);
    CHECK(mid.distance(ctx, out).total == 0.0);
    CHECK(mid.tensor_count() == 5);

    // A checkpoint folder holding model.safetensors: the same set as the file.
    const std::string folder = scratch_path("checkpoint"), inside = folder + "/model.safetensors";
    CHECK(mkdir(folder.c_str(), 0700) == 0);
    out.save(inside);
    CHECK(tl::Params::load_checkpoint(ctx, folder).distance(ctx, mid).total == 0.0);
    CHECK(tl::Params::load_checkpoint(ctx, inside).tensor_count() == 5);
    CHECK_THROWS(tl::Params::load_checkpoint(ctx, scratch_path("missing")), TL_STATUS_IO);
    std::remove(inside.c_str());
    CHECK(rmdir(folder.c_str()) == 0);

    // Mapped: the values of the copy; a write into the set (an interpolation) never reaches the
    // file. A loaded (copied) set is a snapshot: rewriting the file in place afterwards, once the
    // mapped set is gone as its contract asks, leaves it as it was.
    {
        std::string before, after, maps;
        CHECK(read_file(pa, before));
        tl::Params mapped = tl::Params::load_mapped(ctx, pa);
        CHECK(mapped.tensor_count() == 5 && mapped.module_count() == 3);
        CHECK(mapped.tensor_data("conv1.weight").values<float>() == ma.conv);
        CHECK(mapped.tensor_data("fc.bias").values<double>() == ma.fc);
        CHECK(mapped.distance(ctx, a).total == 0.0);
        // Where the process's mappings can be listed (Linux), the file is among them while the
        // set lives, and a file loaded by load is not.
        if (read_file("/proc/self/maps", maps)) CHECK(maps_file(pa) && !maps_file(pb));
        mapped.interpolate(ctx, a, b, 1.0);
        CHECK(mapped.tensor_data("conv1.weight").values<float>() == mb.conv);
        CHECK(read_file(pa, after) && after == before);
    }
    CHECK(!maps_file(pa));  // unmapped with the set
    const tl::Params snapshot = tl::Params::load(ctx, pa);
    write_safetensors(pa, mb);
    CHECK(snapshot.tensor_data("conv1.weight").values<float>() == ma.conv);
    CHECK(a.tensor_data("fc.bias").values<double>() == ma.fc);
    CHECK_THROWS(tl::Params::load_mapped(ctx, scratch_path("missing.safetensors")), TL_STATUS_IO);
    CHECK_THROWS(tl::Params::load_mapped(ctx, "."), TL_STATUS_IO);  // a folder, not a regular file

    // Wrap: the library reads and writes the caller's vectors in place.
    Model live;
    tl::Params w = tl::Params::wrap(ctx, {tl::Tensor("conv1.weight", live.conv, {2, 3}),
                                          tl::Tensor("layer1.0.weight", live.l10, {4}),
                                          tl::Tensor("layer1.1.bias", live.l11, {2}),
                                          tl::Tensor("fc.bias", live.fc, {3})});
    CHECK(w.module_count() == 3 && w.tensor_count() == 4);
    w.interpolate(ctx, a, b, 1.0);
    CHECK(live.conv == mb.conv && live.l10 == mb.l10 && live.l11 == mb.l11 && live.fc == mb.fc);
    w.interpolate(ctx, a, b, 0.25);
    for (size_t i = 0; i < 3; i++) CHECK_CLOSE(live.fc[i], 0.75 * ma.fc[i] + 0.25 * mb.fc[i], 1e-14);
    CHECK_CLOSE(w.distance(ctx, a).total, 0.25 * std::sqrt(dd_total), 1e-6);
    live.conv = ma.conv;  // the set sees the caller's writes too
    CHECK_CLOSE(w.distance(ctx, a).per_module[0], 0.0, 1e-15);
    CHECK_THROWS(tl::Params::wrap(ctx, {tl::Tensor("x", live.conv, {7})}), TL_STATUS_SHAPE_MISMATCH);
    CHECK_THROWS(tl::Params::wrap(ctx, {tl::Tensor("x", live.conv.data(), {6}), tl::Tensor("y", live.conv.data(), {2})}),
                 TL_STATUS_INVALID_ARGUMENT);  // overlapping tensors
    const tl::Params empty = tl::Params::wrap(ctx, {});
    CHECK(empty.module_count() == 0 && empty.tensor_count() == 0);
    const tl::ModuleValues none = empty.distance(ctx, tl::Params::wrap(ctx, {}));
    CHECK(none.per_module.empty() && none.total == 0.0);
    CHECK(empty.norms(ctx).per_module.empty());

    // Grouping options.
    a.group_by_depth(2);
    CHECK((a.module_names() == std::vector<std::string>{"conv1.weight", "layer1.0", "layer1.1", "fc.bias"}));
    a.group_by_tensor();
    CHECK(a.module_count() == 4);
    CHECK_CLOSE(a.distance(ctx, b).total, std::sqrt(dd_total), 1e-12);
    a.group_by_prefixes({"layer1", "layer1.1"});
    CHECK((a.module_names() == std::vector<std::string>{"conv1.weight", "layer1", "layer1.1", "fc.bias"}));
    CHECK_THROWS(a.group_by_prefixes({"layer1"}, tl::Unmatched::Error), TL_STATUS_NOT_FOUND);
    CHECK(a.module_count() == 4);  // unchanged on failure
    CHECK_THROWS(a.group_by_depth(0), TL_STATUS_INVALID_ARGUMENT);
    CHECK_THROWS(a.group_by_prefixes({}), TL_STATUS_INVALID_ARGUMENT);
    a.group_by_first();
    CHECK(a.module_count() == 3);

    // Errors: files, mismatched sets, moved-from sets.
    CHECK_THROWS(tl::Params::load(ctx, scratch_path("missing.safetensors")), TL_STATUS_IO);
    CHECK_THROWS(out.save(scratch_path("no/such/dir/x.safetensors")), TL_STATUS_IO);
    const tl::Params only_conv = tl::Params::wrap(ctx, {tl::Tensor("conv1.weight", live.conv, {2, 3})});
    CHECK_THROWS(a.distance(ctx, only_conv), TL_STATUS_SHAPE_MISMATCH);
    CHECK_THROWS(out.interpolate(ctx, a, b, 0.5).interpolate(ctx, a, out, 0.5), TL_STATUS_INVALID_ARGUMENT);
    tl::Params moved = std::move(out);
    CHECK_THROWS(out.module_count(), TL_STATUS_NULL_ARGUMENT);
    CHECK_THROWS(out.interpolate(ctx, a, b, 0.5), TL_STATUS_NULL_ARGUMENT);
    CHECK(moved.module_count() == 3);
    std::remove(pa.c_str());
    std::remove(pb.c_str());
    std::remove(pm.c_str());
}

// Evaluators, curves, barriers, criticality and rewind with a quadratic toy loss
// L(w) = ||w||^2 / (2K) evaluated in a C++ callback (a lambda over the host's live model), the
// built-in MLP, and the data tools.
static void test_analysis() {
    const uint64_t K = 1000;
    tl::Context ctx(tl::Backend::Cpu);
    std::vector<float> init_w(K), final_w(K, 0.0f), live_w(K, 0.0f);
    double a = 0;
    for (auto& x : init_w) {
        x = static_cast<float>(normal());
        a += static_cast<double>(x) * x;
    }
    a /= static_cast<double>(K);
    tl::Params init = tl::Params::wrap(ctx, {tl::Tensor("w.weight", init_w.data(), {K})});
    tl::Params fin = tl::Params::wrap(ctx, {tl::Tensor("w.weight", final_w.data(), {K})});
    tl::Params live = tl::Params::wrap(ctx, {tl::Tensor("w.weight", live_w.data(), {K})});
    int calls = 0;
    const tl_params* live_handle = live.get();
    tl::Evaluator ev([&](const tl_params* p) {
        if (p != live_handle) throw std::runtime_error("not the live set");
        double s = 0;
        for (float x : live_w) s += static_cast<double>(x) * x;
        ++calls;
        const double l = s / (2.0 * static_cast<double>(K));
        return tl::Metrics{l, l, 1 - l};
    });
    tl::Evaluator moved_ev = std::move(ev);  // the callback's address survives a move
    CHECK(ev.get() == nullptr);

    const std::vector<double> lambdas = {-1, 0, 0.25, 0.5, 1, 1.5, 2};
    const auto curve = tl::interpolation_curve(ctx, moved_ev, init, fin, live, lambdas);
    CHECK(calls == 7 && curve.size() == 7);
    for (size_t i = 0; i < 7; i++)
        CHECK_CLOSE(curve[i].loss, (1 - lambdas[i]) * (1 - lambdas[i]) * a / 2, 1e-5);
    CHECK_CLOSE(moved_ev.evaluate(live).loss, a / 2, 1e-5);  // live ends at lambda = 2: (1 - 2)^2
    tl::BarrierResult bar = tl::barrier(lambdas, curve, tl::Metric::Loss, 1e-9);
    CHECK(bar.value == 0.0 && bar.same_basin == 1);  // convex: never above the chord
    // A known bump: accuracy 0.9 -> 0.5 -> 0.8, shortfall below the chord 0.85 - 0.5.
    const std::vector<tl::Metrics> bump = {{0.1, 0.1, 0.9}, {0.5, 0.5, 0.5}, {0.2, 0.2, 0.8}};
    bar = tl::barrier({0, 0.5, 1}, bump, tl::Metric::Accuracy, 0.01);
    CHECK_CLOSE(bar.value, 0.35, 1e-12);
    CHECK(bar.peak_lambda == 0.5 && bar.same_basin == 0 && bar.start == 0.9 && bar.end == 0.8);
    CHECK_THROWS(tl::barrier({0.25, 0.5}, {bump[0], bump[1]}, tl::Metric::Loss), TL_STATUS_INVALID_ARGUMENT);
    CHECK_THROWS(tl::barrier({0, 1}, bump, tl::Metric::Loss), TL_STATUS_SHAPE_MISMATCH);

    // Criticality: minimise alpha^2 K a / sigma^2 subject to (1 - alpha)^2 a / 2 + sigma^2 / 2 <= eps.
    const double eps = 0.3;
    double want = INFINITY;
    for (int i = 1; i <= 200000; i++) {
        const double al = i / 200000.0, s2 = 2 * eps - (1 - al) * (1 - al) * a;
        if (s2 > 0 && s2 <= 1) want = std::fmin(want, al * al * static_cast<double>(K) * a / s2);
    }
    tl::CriticalityOptions o;
    CHECK(o.size == sizeof(tl_criticality_options) && o.alphas == 11 && o.sigmas == 11 && o.samples == 10);
    CHECK(o.refined == 1 && o.noise_relative == 1 && o.sigma_floor == 1e-3 && o.confidence == 2 && o.repeats == 3);
    o.tolerance = 1e-300;  // 1 + tol == 1: refused, never an endless bisection
    CHECK_THROWS(tl::module_criticality(ctx, moved_ev, init, fin, live, 0, o), TL_STATUS_INVALID_ARGUMENT);
    o = tl::CriticalityOptions::reference();
    CHECK(o.refined == 0 && o.sigma_floor == 0 && o.repeats == 1 && o.size == sizeof(tl_criticality_options));
    o.metric = TL_METRIC_LOSS;
    o.eps_relative = 0;
    o.eps = eps;
    o.refined = 1;
    o.tolerance = 1e-3;
    o.alpha_steps = 12;
    o.seed = 3;
    const tl::Criticality c = tl::module_criticality(ctx, moved_ev, init, fin, live, 0, o);
    CHECK_CLOSE(c.value / want, 1.0, 0.05);
    CHECK(c.expected <= eps && c.numel == K);
    const tl::Criticality c2 = tl::module_criticality(ctx, moved_ev, {&init, &fin}, live, 0, o);
    CHECK_CLOSE(c2.value, c.value, 1e-6);
    const tl::NetworkCriticality net = tl::network_criticality(ctx, moved_ev, init, fin, live, o);
    CHECK(net.modules.size() == 1 && net.summary.total == net.modules[0].value);
    CHECK(std::isfinite(net.summary.joint_expected));
    CHECK(tl::pac_bayes_bound(net.modules, net.summary.joint_expected, 1000, 0.05) > net.summary.joint_expected);
    const tl::NetworkCriticality net2 = tl::network_criticality(ctx, moved_ev, {&init, &fin}, live, o);
    CHECK_CLOSE(net2.summary.total, net.summary.total, 1e-6);
    const double bound = tl::pac_bayes_bound({c}, 0.1, 1000, 0.05);
    CHECK(std::isfinite(bound) && bound > 0.1);
    CHECK_THROWS(tl::pac_bayes_bound({c}, 0.1, 1, 0.05), TL_STATUS_INVALID_ARGUMENT);
    CHECK_THROWS(tl::pac_bayes_bound({c}, NAN, 1000, 0.05), TL_STATUS_INVALID_ARGUMENT);
    // The full reports: three repeats, the size-aware measures, the rewind measures, the bound's reading.
    tl::CriticalityOptions o3 = o;
    o3.repeats = 3;
    const tl::CriticalityReport rep = tl::module_criticality_report(ctx, moved_ev, init, fin, live, 0, o3);
    CHECK(rep.size == sizeof(tl::CriticalityReport) && rep.feasible == 1 && rep.repeats == 3);
    CHECK_CLOSE(rep.value / want, 1.0, 0.05);
    CHECK(rep.spread > 0 && rep.per_parameter == rep.value / K);
    CHECK_CLOSE(rep.pac_bayes_term, K * std::log1p(rep.value / K), 1e-12);
    CHECK_CLOSE(rep.rewound_metric, a / 2, 1e-5);
    CHECK_CLOSE(rep.rewind_area, a / 6 + a * 0.01 / 12, 1e-5);
    const tl::NetworkCriticalityReport nrep = tl::network_criticality_report(ctx, moved_ev, init, fin, live, o3);
    CHECK(nrep.summary.total == nrep.modules[0].value && nrep.summary.ranking_stable == 1);
    CHECK(nrep.summary.pac_bayes_kl == nrep.modules[0].pac_bayes_term && nrep.summary.infeasible_modules == 0);
    const tl::BoundReport br = tl::pac_bayes_report(nrep.summary, 1000, 0.05, 0.1, 500);
    CHECK(br.has_held_out == 1 && br.vacuous == (br.bound > 1 ? 1u : 0u));
    CHECK_CLOSE(br.held_out, 0.1 + std::sqrt(std::log(1 / 0.05) / 1000), 1e-12);
    o.eps = -1;  // infeasible: +inf, and so is the bound
    const tl::Criticality inf = tl::module_criticality(ctx, moved_ev, init, fin, live, 0, o);
    CHECK(std::isinf(inf.value) && std::isinf(tl::pac_bayes_bound({inf}, 0.1, 1000, 0.05)));
    o.refined = 2;
    CHECK_THROWS(tl::module_criticality(ctx, moved_ev, init, fin, live, 0, o), TL_STATUS_INVALID_ARGUMENT);
    CHECK_THROWS(tl::module_criticality(ctx, moved_ev, init, fin, live, 5), TL_STATUS_NOT_FOUND);

    const auto rw = tl::rewind_curve(ctx, moved_ev, init, fin, live, 0, {1, 0});
    CHECK(rw[0].loss == 0.0);
    CHECK_CLOSE(rw[1].loss, a / 2, 1e-5);

    // Exceptions thrown in the callback stop at the C boundary and come back as TL_STATUS_CALLBACK.
    tl::Evaluator bad([](const tl_params*) -> tl::Metrics { throw std::runtime_error("host model exploded"); });
    bool thrown = false;
    try {
        tl::interpolation_curve(ctx, bad, init, fin, live, lambdas);
    } catch (const tl::Error& e) {
        thrown = e.status() == TL_STATUS_CALLBACK && e.message().find("host model exploded") != std::string::npos;
    }
    CHECK(thrown);
    tl::Evaluator odd([](const tl_params*) -> tl::Metrics { throw 42; });
    CHECK_THROWS(odd.evaluate(live), TL_STATUS_CALLBACK);
    CHECK_THROWS(tl::Evaluator(tl::Evaluator::Function()), TL_STATUS_NULL_ARGUMENT);

    // The built-in MLP.
    const std::vector<uint64_t> sizes = {4, 6, 3};
    const size_t rows = 40;
    std::vector<float> x(rows * 4);
    std::vector<uint32_t> y(rows);
    for (size_t i = 0; i < rows; i++) {
        for (size_t j = 0; j < 4; j++) x[i * 4 + j] = static_cast<float>(normal());
        y[i] = static_cast<uint32_t>(x[i * 4] > 0) + static_cast<uint32_t>(x[i * 4 + 1] > 0.5f);
    }
    tl::Evaluator mlp = tl::Evaluator::mlp(sizes, x, y);
    tl::Params p1 = tl::mlp_init(sizes, 1), p2 = tl::mlp_init(sizes, 2);
    tl::Params plive = p2.clone();
    CHECK(p2.module_count() == 2);
    const tl::Metrics m = mlp.evaluate(p2);
    CHECK(m.loss > 0 && m.error >= 0 && m.error <= 1 && std::fabs(m.accuracy + m.error - 1) < 1e-12);
    const auto r = tl::rewind_curve(ctx, mlp, p1, p2, plive, 1, {1, 0.5});
    CHECK(r[0].loss == m.loss && r[0].error == m.error);
    tl::CriticalityOptions mo = tl::CriticalityOptions::reference();
    mo.noise_relative = 1;
    mo.samples = 3;
    mo.seed = 11;
    const auto n1 = tl::network_criticality(ctx, mlp, p1, p2, plive, mo);
    const auto n2 = tl::network_criticality(ctx, mlp, p1, p2, plive, mo);
    CHECK(n1.modules.size() == 2 && n1.summary.total == n2.summary.total);
    CHECK(n1.summary.total == n1.modules[0].value + n1.modules[1].value);
    CHECK(n1.summary.eps == 1.01 * n1.summary.final_metric);
    CHECK_THROWS(tl::Evaluator::mlp({4, 1}, x, y), TL_STATUS_INVALID_ARGUMENT);
    CHECK_THROWS(tl::Evaluator::mlp(sizes, std::vector<float>(3), y), TL_STATUS_SHAPE_MISMATCH);

    // Block shuffle: b = h = w is the identity; b = 2 moves whole blocks, the same in both images.
    std::vector<float> img(32), orig(32);
    for (int i = 0; i < 32; i++) orig[i] = img[i] = static_cast<float>(i);
    tl::block_shuffle(img, 2, 1, 4, 4, 4, 5);
    CHECK(img == orig);
    tl::block_shuffle(img, 2, 1, 4, 4, 2, 5);
    CHECK(img != orig);
    for (int i = 0; i < 16; i++) CHECK(img[16 + i] == img[i] + 16);
    CHECK_THROWS(tl::block_shuffle(img, 2, 1, 4, 4, 3, 5), TL_STATUS_INVALID_ARGUMENT);
    CHECK_THROWS(tl::block_shuffle(img, 3, 1, 4, 4, 2, 5), TL_STATUS_SHAPE_MISMATCH);

    const tl::Agreement ag = tl::prediction_agreement({0, 1, 9, 9, 7, 5}, {0, 8, 2, 9, 6, 5}, {0, 1, 2, 3, 4, 5});
    CHECK(ag.counts[0] == 2 && ag.counts[1] == 1 && ag.counts[2] == 1 && ag.counts[3] == 1 && ag.counts[4] == 1);
    CHECK((ag.category == std::vector<uint8_t>{0, 1, 2, 3, 4, 0}));
    CHECK_THROWS(tl::prediction_agreement({0}, {0, 1}, {0, 1}), TL_STATUS_SHAPE_MISMATCH);
}

// The built-in CNN: spec, init, training on stripes vs checkerboards (the loss falls), the
// evaluator in a curve and module criticality, activations, mlp_train, and the errors.
static void test_cnn() {
    const std::string spec =
        R"({"input": [1, 6, 6], "classes": 2, "layers": [
            {"type": "conv", "name": "conv1", "out": 4, "kernel": 3, "padding": 1},
            {"type": "groupnorm", "name": "gn1", "groups": 2}, {"type": "relu"},
            {"type": "block", "name": "layer1", "out": 4, "groups": 2},
            {"type": "global_avgpool"}, {"type": "dense", "name": "fc", "out": 2}]})";
    tl::Cnn cnn(spec);
    const tl::ImageShape s = cnn.input_shape();
    CHECK(s.c == 1 && s.h == 6 && s.w == 6 && cnn.classes() == 2);
    CHECK((cnn.module_names() == std::vector<std::string>{"conv1", "layer1", "fc"}));
    CHECK(cnn.module_width(0) == 4 * 36 && cnn.module_width(1) == 4 * 36 && cnn.module_width(2) == 2);
    CHECK_THROWS(cnn.module_name(3), TL_STATUS_NOT_FOUND);
    CHECK_THROWS(cnn.module_width(3), TL_STATUS_NOT_FOUND);

    const size_t rows = 32;
    std::vector<float> x(rows * 36);
    std::vector<uint32_t> y(rows);
    for (size_t r = 0; r < rows; r++) {
        y[r] = static_cast<uint32_t>(r % 2);
        for (size_t i = 0; i < 6; i++)
            for (size_t j = 0; j < 6; j++)
                x[r * 36 + i * 6 + j] = static_cast<float>(((y[r] ? i + j : i) % 2 ? 1.0 : -1.0) + 0.3 * normal());
    }
    tl::Params init = cnn.init(1);
    CHECK(init.module_count() == 3);
    tl::Params trained = init.clone();
    tl::TrainOptions opts;
    CHECK(opts.size == sizeof(tl_train_options) && opts.epochs == 10 && opts.schedule == TL_LR_SCHEDULE_CONSTANT);
    opts.epochs = 8;
    opts.batch = 8;
    opts.with_schedule(tl::LrSchedule::Cosine);
    const std::vector<double> losses = cnn.train(trained, x, y, opts);
    CHECK(losses.size() == 8 && losses[7] < 0.5 * losses[0]);

    tl::Evaluator ev = cnn.evaluator(x, y);
    const tl::Metrics before = ev.evaluate(init), after = ev.evaluate(trained);
    CHECK(after.loss < before.loss && after.error <= before.error);
    tl::Context ctx(tl::Backend::Cpu);
    tl::Params live = init.clone();
    const auto curve = tl::interpolation_curve(ctx, ev, init, trained, live, {0, 0.5, 1});
    CHECK(curve[0].loss == before.loss && curve[2].loss == after.loss);
    tl::CriticalityOptions o;
    o.samples = 2;
    o.repeats = 1;
    o.metric = TL_METRIC_LOSS;
    o.eps = 0.1;
    const tl::Criticality c = tl::module_criticality(ctx, ev, init, trained, live, 1, o);
    CHECK(c.value >= 0 && c.numel > 0);

    const std::vector<float> logits = cnn.activations(trained, x, 2);
    CHECK(logits.size() == rows * 2);
    size_t wrong = 0;
    for (size_t r = 0; r < rows; r++) wrong += (logits[2 * r + 1] > logits[2 * r]) != (y[r] == 1);
    CHECK_CLOSE(after.error, static_cast<double>(wrong) / rows, 1e-12);
    for (float v : cnn.activations(trained, x, 1)) CHECK(std::isfinite(v));

    const std::vector<uint64_t> sizes = {36, 8, 2};
    tl::Params mlp = tl::mlp_init(sizes, 2);
    const std::vector<double> mlp_losses = tl::mlp_train(sizes, mlp, x, y, opts);
    CHECK(mlp_losses.size() == 8 && mlp_losses[7] < mlp_losses[0]);

    CHECK_THROWS(tl::Cnn("{\"input\": [1, 6, 6]"), TL_STATUS_INVALID_ARGUMENT);
    CHECK_THROWS(cnn.evaluator(std::vector<float>(35), {0}), TL_STATUS_SHAPE_MISMATCH);
    CHECK_THROWS(cnn.evaluator(x, std::vector<uint32_t>(rows, 2)), TL_STATUS_INVALID_ARGUMENT);
    CHECK_THROWS(cnn.train(mlp, x, y, opts), TL_STATUS_NOT_FOUND);
    CHECK_THROWS(tl::mlp_train(sizes, mlp, x, std::vector<uint32_t>(3), opts), TL_STATUS_SHAPE_MISMATCH);
    opts.lr = -1;
    CHECK_THROWS(cnn.train(trained, x, y, opts), TL_STATUS_INVALID_ARGUMENT);
    tl::Cnn moved = std::move(cnn);
    CHECK_THROWS(cnn.init(1), TL_STATUS_NULL_ARGUMENT);
    CHECK(moved.classes() == 2);
}

// Alignment: a known permutation of an MLP recovered by weight and by activation matching, the
// layer-wise curve against the plain one, and errors.
static void test_align() {
    tl::Context ctx(tl::Backend::Cpu);
    const std::vector<uint64_t> sizes = {5, 7, 4};
    tl::Params a = tl::mlp_init(sizes, 1);
    tl::PermSpec spec = tl::PermSpec::infer(a);
    CHECK(spec.group_count() == 1 && spec.units() == 7 && spec.group_size(0) == 7);
    spec.check(a);
    const std::vector<uint64_t> hidden = {3, 0, 6, 1, 5, 2, 4};
    tl::Params b = tl::align_apply(spec, a, hidden);
    const tl::Alignment found = tl::align_weights(spec, a, b);
    CHECK(found.converged);
    for (size_t i = 0; i < 7; i++) CHECK(hidden[found.perms[i]] == i);
    tl::Params back = tl::align_apply(spec, b, found.perms);
    CHECK(back.distance(ctx, a).total == 0.0);

    // Activations: B's column i is A's column hidden[i].
    const uint64_t rows = 30;
    std::vector<float> acts_a(rows * 7), acts_b(rows * 7);
    for (auto& x : acts_a) x = static_cast<float>(normal());
    for (uint64_t r = 0; r < rows; r++)
        for (size_t i = 0; i < 7; i++) acts_b[r * 7 + i] = acts_a[r * 7 + hidden[i]];
    const auto by_acts =
        tl::align_activations(ctx, spec, {tl::MatrixView(acts_a, rows, 7)}, {tl::MatrixView(acts_b, rows, 7)});
    CHECK(by_acts == found.perms);

    // Layer-wise: both modules moving is the plain curve.
    std::vector<float> x(20 * 5);
    std::vector<uint32_t> labels(20);
    for (auto& v : x) v = static_cast<float>(normal());
    for (size_t i = 0; i < labels.size(); i++) labels[i] = static_cast<uint32_t>(i % 4);
    tl::Evaluator ev = tl::Evaluator::mlp(sizes, x, labels);
    tl::Params other = tl::mlp_init(sizes, 2);
    tl::Params live = a.clone();
    const std::vector<double> lambdas = {0, 0.5, 1};
    const auto plain = tl::interpolation_curve(ctx, ev, a, other, live, lambdas);
    const auto all = tl::layerwise_curve(ctx, ev, a, other, live, lambdas, 0, 2);
    for (size_t k = 0; k < 3; k++) CHECK(all[k].loss == plain[k].loss);

    CHECK_THROWS(tl::align_apply(spec, b, {0, 1}), TL_STATUS_SHAPE_MISMATCH);
    CHECK_THROWS(tl::align_apply(spec, b, {0, 0, 1, 2, 3, 4, 5}), TL_STATUS_INVALID_ARGUMENT);
    CHECK_THROWS(tl::PermSpec::from_json("{"), TL_STATUS_FORMAT);
    CHECK_THROWS(tl::layerwise_curve(ctx, ev, a, other, live, lambdas, 1, 2), TL_STATUS_INVALID_ARGUMENT);
    CHECK_THROWS(tl::align_weights(spec, a, b, 0, 0), TL_STATUS_INVALID_ARGUMENT);
}

// CKA statistics: the interval around the reference CKA, the null's p-value for dependent data,
// the most influential sample equal to recomputing without it, and an option error.
static void test_cka_statistics() {
    const tl::Context ctx = tl::Context::cpu();
    const Dense x = random_dense(40, 6);
    Dense y = mix(x, 4, 0.8);
    for (size_t c = 0; c < 4; c++) y.v[9 * 4 + c] *= 10.0;  // an outlying sample
    tl_cka_stats_options opts = tl_cka_stats_options_default();
    CHECK(opts.interval == TL_CKA_INTERVAL_JACKKNIFE);
    const auto jack = ctx.cka_statistics(tl::MatrixView(x.v, 40, 6), tl::MatrixView(y.v, 40, 4), opts);
    CHECK(jack.report.lower < jack.report.jackknife_estimate && jack.report.jackknife_estimate < jack.report.upper);
    CHECK(std::isnan(jack.report.bias_correction) && jack.report.blocks == 0);
    opts.interval = TL_CKA_INTERVAL_PERCENTILE;
    opts.resamples = 200;
    opts.permutations = 19;
    const auto s = ctx.cka_statistics(tl::MatrixView(x.v, 40, 6), tl::MatrixView(y.v, 40, 4), opts, 2);
    CHECK_CLOSE(s.report.cka, ref_cka(x, y, false), 1e-10);
    CHECK(s.report.lower < s.report.cka && s.report.cka < s.report.upper);
    CHECK(s.report.p_value == 0.05);
    CHECK(s.top_samples.size() == 2 && s.top_deltas.size() == 2 && s.top_samples[0] == 9);
    Dense x9{39, 6, {}}, y9{39, 4, {}};
    for (size_t r = 0; r < 40; r++) {
        if (r == 9) continue;
        x9.v.insert(x9.v.end(), x.v.begin() + r * 6, x.v.begin() + (r + 1) * 6);
        y9.v.insert(y9.v.end(), y.v.begin() + r * 4, y.v.begin() + (r + 1) * 4);
    }
    CHECK_CLOSE(s.report.cka + s.top_deltas[0], ref_cka(x9, y9, false), 1e-10);
    opts.level = 2.0;
    CHECK_THROWS(ctx.cka_statistics(tl::MatrixView(x.v, 40, 6), tl::MatrixView(y.v, 40, 4), opts),
                 TL_STATUS_INVALID_ARGUMENT);
}

int main() {
    const std::pair<const char*, std::function<void()>> tests[] = {
        {"cka_statistics", test_cka_statistics},
        {"basics", test_basics},       {"context", test_context},       {"cka_linear", test_cka_linear},
        {"views", test_views},         {"errors", test_errors},         {"cka_matrix", test_cka_matrix},
        {"accumulator", test_accumulator}, {"params", test_params},
        {"analysis", test_analysis},   {"cnn", test_cnn},
        {"align", test_align},
    };
    for (const auto& t : tests) {
        t.second();
        std::printf("ok %s\n", t.first);
    }
    std::printf("all C++ binding tests passed (%d checks)\n", g_checks);
    return 0;
}
