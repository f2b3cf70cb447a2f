// The built-in CNN from C++: build it from a JSON spec, train it on 16 tiny images, watch the
// loss fall, and compare its first module's activations before and after training with CKA.
//
// tests/bindings_cpp.rs builds this file and checks the printed values against the same run
// through the Rust API.
#include <cstdio>
#include <vector>

#include "transferlens.hpp"

namespace tl = transferlens;

int main() {
    tl::Cnn cnn(R"({"input": [1, 4, 4], "classes": 2, "layers": [
        {"type": "conv", "name": "conv1", "out": 4, "kernel": 3, "padding": 1},
        {"type": "groupnorm", "name": "gn1", "groups": 2}, {"type": "relu"},
        {"type": "global_avgpool"}, {"type": "dense", "name": "fc", "out": 2}]})");

    // 16 images of 1 x 4 x 4 (NCHW): class 1 bright in the top half, class 0 in the bottom.
    const size_t rows = 16, pixels = 16;
    std::vector<float> x(rows * pixels);
    std::vector<uint32_t> labels(rows);
    for (size_t r = 0; r < rows; r++) {
        labels[r] = static_cast<uint32_t>(r % 2);
        for (size_t p = 0; p < pixels; p++) {
            const float bright = (p < 8) == (labels[r] == 1) ? 1.0f : -1.0f;
            x[r * pixels + p] = bright + 0.25f * static_cast<float>((r * 7 + p * 3) % 5) - 0.5f;
        }
    }

    tl::Params initial = cnn.init(1);
    tl::Params trained = initial.clone();
    tl::TrainOptions opts;
    opts.epochs = 6;
    opts.batch = 4;
    opts.lr = 0.1;
    opts.seed = 3;
    opts.with_schedule(tl::LrSchedule::Cosine);
    const std::vector<double> losses = cnn.train(trained, x, labels, opts);
    std::printf("epoch losses:");
    for (double l : losses) std::printf(" %.12g", l);
    std::printf("\n");

    tl::Evaluator evaluator = cnn.evaluator(x, labels);
    std::printf("error: %.12g -> %.12g\n", evaluator.evaluate(initial).error, evaluator.evaluate(trained).error);

    // Activations are rows x width (row-major): samples x features, as CKA takes them.
    const uint64_t width = cnn.module_width(0);
    const std::vector<float> before = cnn.activations(initial, x, 0), after = cnn.activations(trained, x, 0);
    tl::Context ctx(tl::Backend::Cpu);
    const double cka = ctx.cka_linear(tl::MatrixView(before, rows, width), tl::MatrixView(after, rows, width),
                                      tl::Estimator::Debiased);
    std::printf("CKA(%s initial, %s trained) = %.12g\n", cnn.module_name(0).c_str(), cnn.module_name(0).c_str(), cka);
    return 0;
}
