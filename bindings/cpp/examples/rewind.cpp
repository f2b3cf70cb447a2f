// Weight-space analysis from C++: how far fine-tuning moved each module of a pre-trained model,
// and what rewinding one module to its pre-trained value does. The two checkpoints are wrapped
// in place (no copy); in real code they come from the framework or from safetensors files
// (transferlens::Params::load).
//
// tests/bindings_cpp.rs builds this file and checks the printed values against an f64 reference.
#include <cmath>
#include <cstdio>
#include <vector>

#include "transferlens.hpp"

namespace tl = transferlens;

// A checkpoint of a toy model: encoder.weight [3, 4], encoder.bias [3], head.weight [2, 3].
struct Checkpoint {
    std::vector<float> enc_w = std::vector<float>(12), enc_b = std::vector<float>(3), head_w = std::vector<float>(6);
};

static Checkpoint make(double step) {
    Checkpoint c;
    std::vector<float>* tensors[3] = {&c.enc_w, &c.enc_b, &c.head_w};
    for (size_t t = 0; t < 3; t++)
        for (size_t i = 0; i < tensors[t]->size(); i++)
            (*tensors[t])[i] = static_cast<float>(0.5 * std::sin(1.0 + 0.7 * i + 2.0 * t) +
                                                  step * 0.05 * (t + 1.0) * std::cos(0.3 * i + t));
    return c;
}

static tl::Params wrap(const tl::Context& ctx, Checkpoint& c) {
    return tl::Params::wrap(ctx, {tl::Tensor("encoder.weight", c.enc_w, {3, 4}),
                                  tl::Tensor("encoder.bias", c.enc_b, {3}),
                                  tl::Tensor("head.weight", c.head_w, {2, 3})});
}

int main() {
    try {
        const tl::Context ctx;
        Checkpoint pre = make(0.0), tuned = make(1.0), scratch = make(0.0);
        const tl::Params p = wrap(ctx, pre), t = wrap(ctx, tuned);
        tl::Params out = wrap(ctx, scratch);  // the results land in `scratch`

        const std::vector<std::string> modules = p.module_names();  // "encoder", "head"
        const tl::Comparison cmp = p.compare(ctx, t);
        for (size_t m = 0; m < modules.size(); m++)
            std::printf("%s: distance %.12f relative %.12f cosine %.12f\n", modules[m].c_str(),
                        cmp.per_module[m].distance, cmp.per_module[m].relative, cmp.per_module[m].cosine);
        std::printf("total: distance %.12f\n", cmp.total.distance);

        // Rewind each module to its pre-trained value, the others fine-tuned.
        for (size_t m = 0; m < modules.size(); m++) {
            out.rewind(ctx, p, t, m, 0.0);
            std::printf("rewound %s: distance to fine-tuned %.12f\n", modules[m].c_str(), out.distance(ctx, t).total);
        }
        // Halfway between the checkpoints.
        out.interpolate(ctx, p, t, 0.5);
        std::printf("halfway: distance to pre-trained %.12f, head.weight[0] %.6f\n", out.distance(ctx, p).total,
                    scratch.head_w[0]);
    } catch (const tl::Error& e) {
        std::fprintf(stderr, "transferlens: %s\n", e.what());
        return 1;
    }
    return 0;
}
