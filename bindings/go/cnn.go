package transferlens

/*
#include <stdint.h>
#include <stdlib.h>
#include "transferlens.h"
*/
import "C"

import (
	"runtime"
	"unsafe"
)

// LRSchedule is how the learning rate changes from epoch to epoch (TrainOptions.Schedule).
type LRSchedule uint32

const (
	LRConstant LRSchedule = C.TL_LR_SCHEDULE_CONSTANT // lr in every epoch
	LRStep     LRSchedule = C.TL_LR_SCHEDULE_STEP     // lr x StepFactor^(epoch / StepEvery)
	LRCosine   LRSchedule = C.TL_LR_SCHEDULE_COSINE   // lr x (1 + cos(pi epoch / epochs)) / 2
)

// TrainOptions are the options of (*CNN).Train and MLPTrain (tl_train_options); start from
// DefaultTrainOptions.
type TrainOptions struct {
	Epochs, Batch uint64
	LR, Momentum  float64
	WeightDecay   float64
	Seed          uint64 // seeds the order in which rows are visited each epoch
	Schedule      LRSchedule
	StepEvery     uint64 // LRStep only
	StepFactor    float64
}

// DefaultTrainOptions returns the library's defaults (tl_train_options_default).
func DefaultTrainOptions() TrainOptions {
	d := C.tl_train_options_default()
	return TrainOptions{
		Epochs: uint64(d.epochs), Batch: uint64(d.batch), LR: float64(d.lr), Momentum: float64(d.momentum),
		WeightDecay: float64(d.weight_decay), Seed: uint64(d.seed), Schedule: LRSchedule(d.schedule),
		StepEvery: uint64(d.step_every), StepFactor: float64(d.step_factor),
	}
}

// toC fills the C struct, size included; nil gives the defaults.
func (o *TrainOptions) toC() C.tl_train_options {
	if o == nil {
		d := DefaultTrainOptions()
		o = &d
	}
	var c C.tl_train_options
	c.size = C.size_t(unsafe.Sizeof(c))
	c.epochs = C.uint64_t(o.Epochs)
	c.batch = C.uint64_t(o.Batch)
	c.lr = C.double(o.LR)
	c.momentum = C.double(o.Momentum)
	c.weight_decay = C.double(o.WeightDecay)
	c.seed = C.uint64_t(o.Seed)
	c.schedule = C.tl_lr_schedule(o.Schedule)
	c.step_every = C.uint64_t(o.StepEvery)
	c.step_factor = C.double(o.StepFactor)
	return c
}

// train runs one C training call that writes opts.Epochs losses into params.
func train(params *Params, opts *TrainOptions, f func(p *C.tl_params, o *C.tl_train_options, losses *C.double, n C.size_t) C.enum_tl_status) ([]float64, error) {
	o := opts.toC()
	p, err := params.use()
	if err != nil {
		return nil, err
	}
	losses := make([]float64, uint64(o.epochs))
	err = call(func() C.enum_tl_status { return f(p, &o, f64ptr(losses), C.size_t(len(losses))) })
	params.written() // also on failure: the weights may be partly trained
	runtime.KeepAlive(params)
	if err != nil {
		return nil, err
	}
	return losses, nil
}

// MLPTrain trains params (a set from MLPInit(sizes, ...)) in place on x (rows x sizes[0] floats,
// row major) with one label per row; it returns each epoch's mean training loss. nil opts are
// the defaults.
func MLPTrain(sizes []uint64, params *Params, x []float32, labels []uint32, opts *TrainOptions) ([]float64, error) {
	if len(sizes) == 0 || uint64(len(x)) != uint64(len(labels))*sizes[0] {
		return nil, errorf(StatusShapeMismatch, "x holds %d floats for %d labels", len(x), len(labels))
	}
	return train(params, opts, func(p *C.tl_params, o *C.tl_train_options, losses *C.double, n C.size_t) C.enum_tl_status {
		return C.tl_mlp_train(u64ptr(sizes), C.size_t(len(sizes)), p, f32ptr(x), u32ptr(labels),
			C.uint64_t(len(labels)), o, losses, n)
	})
}

// CNN is the built-in convolutional network's architecture, made from a JSON specification
// (docs/cnn.md); it holds no weights. Images are NCHW float32s, one C x H x W image per row.
// Its methods may be called from several goroutines at once. Close frees it.
type CNN struct {
	ptr *C.tl_cnn
}

// NewCNN parses the specification; its errors name the layer and the field.
func NewCNN(specJSON string) (*CNN, error) {
	spec := C.CString(specJSON)
	defer C.free(unsafe.Pointer(spec))
	var out *C.tl_cnn
	if err := call(func() C.enum_tl_status { return C.tl_cnn_create(spec, &out) }); err != nil {
		return nil, err
	}
	c := &CNN{ptr: out}
	runtime.SetFinalizer(c, (*CNN).Close)
	return c, nil
}

// Close frees the CNN; closing twice is a no-op. Evaluators and sets made from it stay valid.
func (c *CNN) Close() error {
	if c == nil {
		return nil
	}
	if c.ptr != nil {
		C.tl_cnn_destroy(c.ptr)
		c.ptr = nil
	}
	runtime.SetFinalizer(c, nil)
	return nil
}

func (c *CNN) handle() (*C.tl_cnn, error) {
	if c == nil || c.ptr == nil {
		return nil, errorf(StatusNullArgument, "use of a closed or nil CNN")
	}
	return c.ptr, nil
}

// Classes is the number of logits of the last layer (0 for a closed CNN).
func (c *CNN) Classes() int {
	h, err := c.handle()
	if err != nil {
		return 0
	}
	defer runtime.KeepAlive(c)
	return int(C.tl_cnn_classes(h))
}

// InputShape is the image shape: channels, height, width.
func (c *CNN) InputShape() (channels, height, width uint64, err error) {
	h, err := c.handle()
	if err != nil {
		return 0, 0, 0, err
	}
	defer runtime.KeepAlive(c)
	var ch, hh, ww C.uint64_t
	err = call(func() C.enum_tl_status { return C.tl_cnn_input_shape(h, &ch, &hh, &ww) })
	return uint64(ch), uint64(hh), uint64(ww), err
}

// ModuleNames lists the modules (conv1, each block, fc, ...), in the order of a set from Init.
func (c *CNN) ModuleNames() []string {
	h, err := c.handle()
	if err != nil {
		return nil
	}
	defer runtime.KeepAlive(c)
	n := int(C.tl_cnn_module_count(h))
	names := make([]string, n)
	for i := range names {
		names[i] = C.GoString(C.tl_cnn_module_name(h, C.size_t(i)))
	}
	return names
}

// ModuleWidth is the features per image of the module's output: the columns of Activations.
func (c *CNN) ModuleWidth(module int) (uint64, error) {
	h, err := c.handle()
	if err != nil {
		return 0, err
	}
	if module < 0 {
		return 0, errorf(StatusNotFound, "module %d", module)
	}
	defer runtime.KeepAlive(c)
	var out C.uint64_t
	err = call(func() C.enum_tl_status { return C.tl_cnn_module_width(h, C.size_t(module), &out) })
	return uint64(out), err
}

// Init makes initial weights (He-normal from seed), grouped into the CNN's modules, with the
// specification in the set's metadata.
func (c *CNN) Init(seed uint64) (*Params, error) {
	h, err := c.handle()
	if err != nil {
		return nil, err
	}
	defer runtime.KeepAlive(c)
	var out *C.tl_params
	if err := call(func() C.enum_tl_status { return C.tl_cnn_init(h, C.uint64_t(seed), &out) }); err != nil {
		return nil, err
	}
	return newParams(out, nil), nil
}

// rows is the number of images in x, which must hold whole images.
func (c *CNN) rows(x []float32) (uint64, error) {
	ch, hh, ww, err := c.InputShape()
	if err != nil {
		return 0, err
	}
	per := ch * hh * ww
	if uint64(len(x))%per != 0 {
		return 0, errorf(StatusShapeMismatch, "x holds %d floats, not a whole number of images of %d", len(x), per)
	}
	return uint64(len(x)) / per, nil
}

func (c *CNN) labelledRows(x []float32, labels []uint32) (uint64, error) {
	rows, err := c.rows(x)
	if err == nil && rows != uint64(len(labels)) {
		err = errorf(StatusShapeMismatch, "x holds %d images for %d labels", rows, len(labels))
	}
	return rows, err
}

// Evaluator makes an evaluator of the CNN on these images and labels (copied), for every
// analysis; module criticality's noisy copies are evaluated in one batch per point.
func (c *CNN) Evaluator(x []float32, labels []uint32) (*Evaluator, error) {
	h, err := c.handle()
	if err != nil {
		return nil, err
	}
	rows, err := c.labelledRows(x, labels)
	if err != nil {
		return nil, err
	}
	defer runtime.KeepAlive(c)
	var out *C.tl_evaluator
	err = call(func() C.enum_tl_status {
		return C.tl_evaluator_cnn(h, f32ptr(x), u32ptr(labels), C.uint64_t(rows), &out)
	})
	if err != nil {
		return nil, err
	}
	return newEvaluator(out, 0, nil), nil
}

// Train trains params in place on the images x with their labels; it returns each epoch's mean
// training loss. nil opts are the defaults.
func (c *CNN) Train(params *Params, x []float32, labels []uint32, opts *TrainOptions) ([]float64, error) {
	h, err := c.handle()
	if err != nil {
		return nil, err
	}
	rows, err := c.labelledRows(x, labels)
	if err != nil {
		return nil, err
	}
	defer runtime.KeepAlive(c)
	return train(params, opts, func(p *C.tl_params, o *C.tl_train_options, losses *C.double, n C.size_t) C.enum_tl_status {
		return C.tl_cnn_train(h, p, f32ptr(x), u32ptr(labels), C.uint64_t(rows), o, losses, n)
	})
}

// Activations is the module's output for the images x: rows x ModuleWidth(module) floats, row
// major, each image's features in NCHW order.
func (c *CNN) Activations(params *Params, x []float32, module int) ([]float32, error) {
	h, err := c.handle()
	if err != nil {
		return nil, err
	}
	rows, err := c.rows(x)
	if err != nil {
		return nil, err
	}
	width, err := c.ModuleWidth(module)
	if err != nil {
		return nil, err
	}
	p, err := params.use()
	if err != nil {
		return nil, err
	}
	defer runtime.KeepAlive(c)
	defer runtime.KeepAlive(params)
	out := make([]float32, rows*width)
	err = call(func() C.enum_tl_status {
		return C.tl_cnn_activations(h, p, f32ptr(x), C.uint64_t(rows), C.size_t(module), f32ptr(out), C.uint64_t(len(out)))
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
