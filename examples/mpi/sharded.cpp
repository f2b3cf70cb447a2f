// transferlens across MPI ranks, in C++ through bindings/cpp/transferlens.hpp: the same two parts
// as sharded.c (CKA over samples sharded across the ranks, combined by MPI_Allreduce of the
// accumulators' states on a common shift; network criticality split by module across the
// ranks), each checked against the single-process answer. Exits non-zero when a difference
// passes its bound (CKA: SHARD_CKA_BOUND; criticality: 0).
//
//   mpirun -np 2 ./sharded_cpp        (run.sh beside this file builds and runs everything)
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "shard_data.h"
#include "transferlens.hpp"

namespace tl = transferlens;

namespace {

int rank = 0, ranks = 1;
constexpr size_t kLayers = SHARD_X_LAYERS + SHARD_Y_LAYERS;

// MPI counts are ints: a state may hold more values than INT_MAX, so move it in pieces.
constexpr size_t kPiece = size_t{1} << 26;

void allreduce_sum(std::vector<double>& values) {
    for (size_t at = 0; at < values.size(); at += kPiece) {
        const int count = static_cast<int>(std::min(kPiece, values.size() - at));
        MPI_Allreduce(MPI_IN_PLACE, values.data() + at, count, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    }
}

void broadcast(std::vector<double>& values, int root) {
    for (size_t at = 0; at < values.size(); at += kPiece) {
        const int count = static_cast<int>(std::min(kPiece, values.size() - at));
        MPI_Bcast(values.data() + at, count, MPI_DOUBLE, root, MPI_COMM_WORLD);
    }
}

std::vector<double> layer_rows(uint64_t seed, int layer, uint64_t first, uint64_t rows) {
    std::vector<double> out(rows * shard_widths[layer]);
    shard_layer_rows(seed, layer, first, rows, out.data());
    return out;
}

// The CKA matrix of this rank's rows, all-reduced into the matrix of every row.
tl::CkaMatrix sharded_cka(const tl::Context& ctx, tl::Estimator estimator, uint64_t seed) {
    uint64_t first = 0, count = 0;
    shard_range(SHARD_SAMPLES, rank, ranks, &first, &count);
    tl::CkaAccumulator acc(ctx, SHARD_X_LAYERS, SHARD_Y_LAYERS, estimator);
    // A rank with no rows fixes the widths instead, so that it can rebase and import like the others.
    if (count == 0) acc.set_widths(std::vector<uint64_t>(shard_widths, shard_widths + kLayers));
    for (uint64_t at = first; at < first + count; at += SHARD_BATCH) {
        const uint64_t rows = std::min<uint64_t>(SHARD_BATCH, first + count - at);
        std::vector<std::vector<double>> batch;
        std::vector<tl::MatrixView> xs, ys;
        for (size_t l = 0; l < kLayers; l++) batch.push_back(layer_rows(seed, static_cast<int>(l), at, rows));
        for (size_t l = 0; l < kLayers; l++)
            (l < SHARD_X_LAYERS ? xs : ys).emplace_back(batch[l].data(), rows, shard_widths[l]);
        acc.update(xs, ys);
    }
    // Rank 0's shift is a data mean when it holds rows, as it does whenever there are at least as
    // many samples as ranks (a zero shift from an empty rank 0 works, less precisely).
    tl::CkaAccumulator::State state = acc.export_state();
    broadcast(state.shift, 0);
    acc.rebase(state.shift);
    state = acc.export_state();
    allreduce_sum(state.moments);
    acc.import_state(state);
    return acc.result();
}

// The single-process answer: cka_matrix on every row.
tl::CkaMatrix single_process_cka(const tl::Context& ctx, tl::Estimator estimator, uint64_t seed) {
    std::vector<std::vector<double>> all;
    std::vector<tl::MatrixView> xs, ys;
    for (size_t l = 0; l < kLayers; l++) all.push_back(layer_rows(seed, static_cast<int>(l), 0, SHARD_SAMPLES));
    for (size_t l = 0; l < kLayers; l++)
        (l < SHARD_X_LAYERS ? xs : ys).emplace_back(all[l].data(), SHARD_SAMPLES, shard_widths[l]);
    return ctx.cka_matrix(xs, ys, estimator);
}

bool cka_part(const tl::Context& ctx, uint64_t seed) {
    bool ok = true;
    for (tl::Estimator estimator : {tl::Estimator::Biased, tl::Estimator::Debiased}) {
        const tl::CkaMatrix sharded = sharded_cka(ctx, estimator, seed);
        const tl::CkaMatrix single = single_process_cka(ctx, estimator, seed);
        const int pairs = static_cast<int>(sharded.values.size());
        double worst = 0, relative = 0;
        for (int k = 0; k < pairs; k++) {
            const double d = std::fabs(sharded.values[k] - single.values[k]);
            worst = std::max(worst, d);
            relative = std::max(relative, d / std::max(1.0, std::fabs(single.values[k])));
        }
        // Every rank holds the same matrix: its largest and smallest value over the ranks agree.
        std::vector<double> high(pairs), low(pairs);
        MPI_Allreduce(sharded.values.data(), high.data(), pairs, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        MPI_Allreduce(sharded.values.data(), low.data(), pairs, MPI_DOUBLE, MPI_MIN, MPI_COMM_WORLD);
        const bool same = high == low;
        MPI_Allreduce(MPI_IN_PLACE, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        MPI_Allreduce(MPI_IN_PLACE, &relative, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        if (rank == 0) {
            std::printf("CKA (%s), %d samples over %d ranks:", estimator == tl::Estimator::Biased ? "biased" : "debiased",
                        SHARD_SAMPLES, ranks);
            for (double v : sharded.values) std::printf(" %.6f", v);
            std::printf("\n  largest difference from a single process: %.3g (bound %.0e)%s; ranks %s\n", worst,
                        SHARD_CKA_BOUND, relative <= SHARD_CKA_BOUND ? "" : ": OVER THE BOUND",
                        same ? "agree bit for bit" : "DISAGREE");
        }
        ok = ok && same && relative <= SHARD_CKA_BOUND;
    }
    return ok;
}

// |a - b|, 0 when both are the same infinity.
double gap(double a, double b) { return a == b ? 0.0 : std::fabs(a - b); }

// The largest difference between two reports over every field (counts included).
double report_gap(const tl::CriticalityReport& a, const tl::CriticalityReport& b) {
    const double pairs[][2] = {
        {a.value, b.value},
        {a.per_parameter, b.per_parameter},
        {a.pac_bayes_term, b.pac_bayes_term},
        {a.spread, b.spread},
        {a.alpha, b.alpha},
        {a.sigma, b.sigma},
        {a.noise_std, b.noise_std},
        {a.expected, b.expected},
        {a.expected_se, b.expected_se},
        {a.rewound_metric, b.rewound_metric},
        {a.rewind_area, b.rewind_area},
        {static_cast<double>(a.numel), static_cast<double>(b.numel)},
        {static_cast<double>(a.points), static_cast<double>(b.points)},
        {static_cast<double>(a.feasible), static_cast<double>(b.feasible)},
        {static_cast<double>(a.repeats), static_cast<double>(b.repeats)},
    };
    double worst = 0;
    for (const auto& p : pairs) worst = std::max(worst, gap(p[0], p[1]));
    return worst;
}

// The MLP's tensors in the order tl_mlp_init makes them, with their shapes.
struct TensorLayout {
    std::string name;
    std::vector<uint64_t> shape;
    uint64_t numel() const { return shape.size() == 2 ? shape[0] * shape[1] : shape[0]; }
};

std::vector<TensorLayout> mlp_layout() {
    std::vector<TensorLayout> out;
    for (int m = 0; m + 1 < SHARD_MLP_LAYERS; m++) {
        const std::string module = "fc" + std::to_string(m + 1);
        out.push_back({module + ".weight", {shard_mlp_sizes[m + 1], shard_mlp_sizes[m]}});
        out.push_back({module + ".bias", {shard_mlp_sizes[m + 1]}});
    }
    return out;
}

// Trained weights of the MLP on every rank: rank 0 trains, then broadcasts them into `storage`,
// which each rank wraps, as a checkpoint would reach every rank.
tl::Params trained_mlp(const tl::Context& ctx, const std::vector<uint64_t>& sizes, const std::vector<float>& x,
                       const std::vector<uint32_t>& labels, std::vector<float>& storage) {
    const std::vector<TensorLayout> layout = mlp_layout();
    uint64_t total = 0;
    for (const TensorLayout& t : layout) total += t.numel();
    storage.assign(total, 0.0f);
    if (rank == 0) {
        tl::Params p = tl::mlp_init(sizes, 2);
        tl::TrainOptions train;
        train.epochs = 30;
        tl::mlp_train(sizes, p, x, labels, train);
        uint64_t at = 0;
        for (const TensorLayout& t : layout) {
            const std::vector<float> values = p.tensor_data(t.name).values<float>();
            std::copy(values.begin(), values.end(), storage.begin() + static_cast<std::ptrdiff_t>(at));
            at += t.numel();
        }
    }
    MPI_Bcast(storage.data(), static_cast<int>(total), MPI_FLOAT, 0, MPI_COMM_WORLD);
    std::vector<tl::Tensor> tensors;
    uint64_t at = 0;
    for (const TensorLayout& t : layout) {
        tensors.emplace_back(t.name, storage.data() + at, t.shape);
        at += t.numel();
    }
    return tl::Params::wrap(ctx, tensors);
}

bool criticality_part(const tl::Context& ctx, uint64_t seed) {
    const std::vector<uint64_t> sizes(shard_mlp_sizes, shard_mlp_sizes + SHARD_MLP_LAYERS);
    std::vector<float> x(SHARD_MLP_ROWS * sizes[0]);
    std::vector<uint32_t> labels(SHARD_MLP_ROWS);
    shard_mlp_rows(seed, 0, SHARD_MLP_ROWS, x.data(), labels.data());
    tl::Evaluator ev = tl::Evaluator::mlp(sizes, x, labels);
    const tl::Params init = tl::mlp_init(sizes, 1);
    std::vector<float> storage;
    const tl::Params final_params = trained_mlp(ctx, sizes, x, labels, storage);
    tl::Params live = final_params.clone();
    const size_t modules = final_params.module_count();

    // Fewer noise samples and a coarser search than the defaults: a quick example.
    tl::CriticalityOptions opts;
    opts.samples = 4;
    opts.alphas = 6;
    opts.alpha_steps = 2;
    opts.repeats = 2;
    opts.seed = seed;

    std::vector<tl::CriticalityReport> reports(modules, tl::CriticalityReport{});
    for (size_t m = 0; m < modules; m++)
        if (static_cast<int>(m % static_cast<size_t>(ranks)) == rank)
            reports[m] = tl::module_criticality_report(ctx, ev, init, final_params, live, m, opts);
    for (size_t m = 0; m < modules; m++)
        MPI_Bcast(&reports[m], static_cast<int>(sizeof reports[m]), MPI_BYTE, static_cast<int>(m % ranks),
                  MPI_COMM_WORLD);
    double total = 0, kl = 0;
    for (const tl::CriticalityReport& r : reports) total += r.value, kl += r.pac_bayes_term;

    // The check: rank 0 computes the whole network in one process.
    double worst = 0;
    if (rank == 0) {
        const tl::NetworkCriticalityReport single =
            tl::network_criticality_report(ctx, ev, init, final_params, live, opts);
        std::printf("network criticality, %zu modules over %d ranks:", modules, ranks);
        for (size_t m = 0; m < modules; m++) {
            std::printf(" %s %.4g (rank %zu)", final_params.module_name(m).c_str(), reports[m].value,
                        m % static_cast<size_t>(ranks));
            worst = std::max(worst, report_gap(reports[m], single.modules[m]));
        }
        worst = std::max({worst, gap(total, single.summary.total), gap(kl, single.summary.pac_bayes_kl)});
        std::printf("\n  total %.6g, PAC-Bayes KL %.6g; largest difference from a single process: %.3g%s\n", total,
                    kl, worst, worst == 0 ? "" : ": NOT 0");
    }
    MPI_Bcast(&worst, 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    return worst == 0;
}

}  // namespace

int main(int argc, char** argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &ranks);
    bool ok = false;
    try {
        // The CPU on every rank; with GPUs, each rank would take its own: tl::Context(Cuda, local rank).
        const tl::Context ctx = tl::Context::cpu();
        const uint64_t seed = 20;
        const bool cka_ok = cka_part(ctx, seed);
        const bool criticality_ok = criticality_part(ctx, seed);
        ok = cka_ok && criticality_ok;
    } catch (const std::exception& e) {
        // A failed call on one rank leaves the others waiting in a collective: end them all.
        std::fprintf(stderr, "rank %d: %s\n", rank, e.what());
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    if (rank == 0) std::printf("sharded C++ example: %s\n", ok ? "OK" : "FAILED");
    MPI_Finalize();
    return ok ? 0 : 1;
}
