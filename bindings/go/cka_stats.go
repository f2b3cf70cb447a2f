package transferlens

/*
#include <stdint.h>
#include "transferlens.h"
*/
import "C"

import (
	"runtime"
	"unsafe"
)

// CKAInterval is how CKAStatistics forms its interval (tl_cka_interval).
type CKAInterval uint32

const (
	// IntervalPercentile: the bootstrap resamples' (1 - level) / 2 and (1 + level) / 2 quantiles.
	IntervalPercentile CKAInterval = C.TL_CKA_INTERVAL_PERCENTILE
	// IntervalBCa: bootstrap, bias-corrected and accelerated (Efron 1987).
	IntervalBCa CKAInterval = C.TL_CKA_INTERVAL_BCA
	// IntervalJackknife: around the bias-corrected estimate, from the n leave-one-out values (no
	// resamples); the default, and the only kind that covers at its level on layers wide
	// against n (docs/analyses.md, "Uncertainty").
	IntervalJackknife CKAInterval = C.TL_CKA_INTERVAL_JACKKNIFE
)

// CKAStatsOptions are the options of CKAStatistics; start from DefaultCKAStatsOptions.
type CKAStatsOptions struct {
	Estimator Estimator
	// 0: no interval. Otherwise an interval of kind Interval: this many bootstrap resamples
	// (at least 2) for IntervalPercentile and IntervalBCa; IntervalJackknife draws none.
	Resamples    uint64
	Level        float64     // the interval's level, strictly between 0 and 1
	Blocks       uint64      // blocks the samples are dealt into for the bootstrap; 0: automatic
	Permutations uint64      // row permutations of y for the null; 0: no null
	Seed         uint64      // seeds the blocks, the resamples and the permutations
	Interval     CKAInterval // how the interval is formed
}

// DefaultCKAStatsOptions returns the library's defaults: the biased estimator, a 0.95 jackknife
// interval, no null, seed 0 (for a bootstrap interval, 1000 resamples in automatic blocks: every
// sample its own block up to 64 samples, else 64 blocks).
func DefaultCKAStatsOptions() CKAStatsOptions {
	d := C.tl_cka_stats_options_default()
	return CKAStatsOptions{Estimator: Estimator(d.estimator), Resamples: uint64(d.resamples),
		Level: float64(d.level), Blocks: uint64(d.blocks), Permutations: uint64(d.permutations), Seed: uint64(d.seed),
		Interval: CKAInterval(d.interval)}
}

// CKAStatistics is how far to trust CKA(x, y) (docs/analyses.md, "Uncertainty"). A statistic
// that was not asked for is NaN (its counts 0, its slices empty).
type CKAStatistics struct {
	CKA float64 // CKA of all the data
	// The interval (of the options' kind) and its standard error: the standard deviation of the
	// resampled values, or the jackknife's.
	Lower, Upper, StdError float64
	// The jackknife interval's centre, n CKA - (n - 1) mean_i CKA(without i); NaN for a
	// bootstrap interval.
	JackknifeEstimate float64
	// BCa's bias correction z0 (either bootstrap interval) and acceleration (BCa only); NaN
	// otherwise.
	BiasCorrection, Acceleration float64
	DegenerateResamples          uint64 // resamples left out because a layer had no variance in them
	Blocks, BlockSize            uint64 // blocks the samples were dealt into, and the largest one's size
	// The permutation p-value (1 + #{null >= CKA}) / (1 + permutations), the null's mean and
	// standard deviation.
	PValue, NullMean, NullStd float64
	// The most influential samples, largest |delta| first: their row indices, and
	// CKA(without the sample) - CKA(all).
	TopSamples []uint64
	TopDeltas  []float64
}

// CKAStatistics returns CKA(x, y) with an interval (opts.Resamples > 0), a permutation
// null (opts.Permutations > 0) and the top most influential samples (top > 0). opts nil gives
// the defaults. It runs on the CPU whatever the context's backend; x and y must be host
// matrices. An option out of range is ErrInvalidArgument naming it; too few samples or a layer
// without variance ErrDegenerateInput; NaN or Inf ErrNonFinite.
func (c *Context) CKAStatistics(x, y Matrix, opts *CKAStatsOptions, top int) (CKAStatistics, error) {
	h, err := c.handle()
	if err != nil {
		return CKAStatistics{}, err
	}
	if top < 0 {
		return CKAStatistics{}, errorf(StatusInvalidArgument, "top = %d is negative", top)
	}
	o := C.tl_cka_stats_options_default()
	if opts != nil {
		o.estimator = C.tl_cka_estimator(opts.Estimator)
		o.resamples, o.level, o.blocks = C.uint64_t(opts.Resamples), C.double(opts.Level), C.uint64_t(opts.Blocks)
		o.permutations, o.seed = C.uint64_t(opts.Permutations), C.uint64_t(opts.Seed)
		o.interval = C.tl_cka_interval(opts.Interval)
	}
	var report C.tl_cka_stats_report
	report.size = C.size_t(unsafe.Sizeof(report))
	samples, deltas := make([]uint64, top), make([]float64, top)
	var a arena
	defer a.release()
	rx, ry := x.raw(&a), y.raw(&a)
	err = call(func() C.enum_tl_status {
		return C.tl_cka_statistics(h, &rx, &ry, &o, &report, u64ptr(samples), f64ptr(deltas), C.uint64_t(top))
	})
	runtime.KeepAlive(c)
	runtime.KeepAlive(x.keep)
	runtime.KeepAlive(y.keep)
	if err != nil {
		return CKAStatistics{}, err
	}
	n := int(report.top_written)
	return CKAStatistics{
		CKA:                 float64(report.cka),
		Lower:               float64(report.lower),
		Upper:               float64(report.upper),
		StdError:            float64(report.std_error),
		JackknifeEstimate:   float64(report.jackknife_estimate),
		BiasCorrection:      float64(report.bias_correction),
		Acceleration:        float64(report.acceleration),
		DegenerateResamples: uint64(report.degenerate_resamples),
		Blocks:              uint64(report.blocks),
		BlockSize:           uint64(report.block_size),
		PValue:              float64(report.p_value),
		NullMean:            float64(report.null_mean),
		NullStd:             float64(report.null_std),
		TopSamples:          samples[:n],
		TopDeltas:           deltas[:n],
	}, nil
}
