// CKA from a C++ training loop: every epoch, the activations of a pre-trained model P and of a
// model T being fine-tuned are fed batch by batch to a CkaAccumulator, and the layer-by-layer
// CKA (debiased) is printed. The "models" are toy two-layer maps whose weights drift with the
// epoch; in real code the activations come from the framework's forward pass.
//
// tests/bindings_cpp.rs builds this file (directly, with CMake's find_package(transferlens) and
// with pkg-config) and checks the printed values against an f64 reference.
#include <cmath>
#include <cstdio>
#include <vector>

#include "transferlens.hpp"

namespace tl = transferlens;

constexpr size_t kSamples = 100, kInputs = 8, kHidden = 6, kOutputs = 4, kBatch = 32, kEpochs = 4;

// Activations of one layer for all samples, row-major (samples x features), as f32.
struct Layer {
    size_t features;
    std::vector<float> values;
};

// The toy model: h1 = tanh(x W1), h2 = tanh(h1 W2); `phase` moves the weights away from P's.
static std::vector<Layer> forward(double phase) {
    std::vector<double> h1(kSamples * kHidden), h2(kSamples * kOutputs);
    for (size_t s = 0; s < kSamples; s++) {
        for (size_t j = 0; j < kHidden; j++) {
            double a = 0;
            for (size_t d = 0; d < kInputs; d++) {
                const double x = std::sin(0.5 * s + 1.3 * d) + std::cos(0.31 * s * (d + 1.0));
                a += x * std::cos(1.1 * d + 0.7 * j + phase);
            }
            h1[s * kHidden + j] = std::tanh(a);
        }
        for (size_t k = 0; k < kOutputs; k++) {
            double a = 0;
            for (size_t j = 0; j < kHidden; j++) a += h1[s * kHidden + j] * std::sin(0.9 * j - 0.4 * k + phase);
            h2[s * kOutputs + k] = std::tanh(a);
        }
    }
    return {{kHidden, std::vector<float>(h1.begin(), h1.end())},
            {kOutputs, std::vector<float>(h2.begin(), h2.end())}};
}

int main() {
    try {
        const tl::Context ctx;  // CUDA where available, else the CPU
        const std::vector<Layer> pretrained = forward(0.0);
        for (size_t epoch = 0; epoch < kEpochs; epoch++) {
            const std::vector<Layer> tuned = forward(0.25 * static_cast<double>(epoch));
            // 2 layers of P against 2 layers of T, streamed over batches of samples.
            tl::CkaAccumulator acc(ctx, pretrained.size(), tuned.size(), tl::Estimator::Debiased);
            for (size_t first = 0; first < kSamples; first += kBatch) {
                const size_t rows = std::min(kBatch, kSamples - first);
                std::vector<tl::MatrixView> xs, ys;
                for (const Layer& l : pretrained) xs.push_back(tl::MatrixView(l.values, kSamples, l.features).rows(first, rows));
                for (const Layer& l : tuned) ys.push_back(tl::MatrixView(l.values, kSamples, l.features).rows(first, rows));
                acc.update(xs, ys);
            }
            const tl::CkaMatrix cka = acc.result();
            std::printf("epoch %zu:", epoch);
            for (size_t i = 0; i < cka.nx; i++)
                for (size_t j = 0; j < cka.ny; j++) std::printf(" P%zu-T%zu %.12f", i + 1, j + 1, cka.at(i, j));
            std::printf("\n");
        }
    } catch (const tl::Error& e) {
        std::fprintf(stderr, "transferlens: %s\n", e.what());
        return 1;
    }
    return 0;
}
