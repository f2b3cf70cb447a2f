package transferlens

/*
#include <stdint.h>
#include <stdlib.h>
#include "transferlens.h"

// A device address as a pointer, without a uintptr -> unsafe.Pointer conversion in Go.
static inline void *tl_go_device_address(uintptr_t p) { return (void *)p; }
*/
import "C"

import (
	"runtime"
	"sort"
	"unsafe"
)

// Grouping is how tensor names are grouped into modules.
type Grouping uint32

const (
	// GroupFirst groups by the first dot-separated component (the default): "layer1.0.conv1.weight"
	// is in module "layer1".
	GroupFirst Grouping = C.TL_MODULE_GROUPING_FIRST
	// GroupDepth groups by the first depth components.
	GroupDepth Grouping = C.TL_MODULE_GROUPING_DEPTH
	// GroupPrefixes groups by explicit prefixes, matched on whole components; the longest wins.
	GroupPrefixes Grouping = C.TL_MODULE_GROUPING_PREFIXES
	// GroupTensor makes every tensor its own module.
	GroupTensor Grouping = C.TL_MODULE_GROUPING_TENSOR
)

// Unmatched is what prefix grouping does with a weight no prefix matches.
type Unmatched uint32

const (
	// UnmatchedOwnGroup puts the tensor in a module of its own, named by its full name.
	UnmatchedOwnGroup Unmatched = C.TL_UNMATCHED_OWN_GROUP
	// UnmatchedError fails with ErrNotFound naming the tensor.
	UnmatchedError Unmatched = C.TL_UNMATCHED_ERROR
)

// Tensor is one tensor in the caller's memory, for WrapParams: the slice is used in place (a
// wrapped set that receives an interpolation writes into it); the name and shape are copied.
type Tensor struct {
	Name  string
	DType DType
	Shape []uint64
	ptr   unsafe.Pointer
	keep  any
	bytes uintptr
	addr  uintptr // device memory (NewDeviceTensor)
	dev   int32   // CUDA device ordinal + 1; 0 for host memory
}

// NewDeviceTensor describes a tensor in the memory of CUDA device device (a device pointer
// from the training framework, e.g. a libtorch tensor's data_ptr()), used in place: distance,
// norms, interpolation and rewind of a set of such tensors run on that device with a CUDA
// context for it. Finish the producer's work on the memory first.
func NewDeviceTensor(name string, ptr uintptr, dtype DType, device int, shape ...uint64) (Tensor, error) {
	if device < 0 {
		return Tensor{}, errorf(StatusInvalidArgument, "tensor %s: device %d is not a CUDA ordinal", name, device)
	}
	n := uint64(1)
	for _, d := range shape {
		n *= d
	}
	if n > 0 && ptr == 0 {
		return Tensor{}, errorf(StatusNullArgument, "tensor %s: the device address is 0 but the shape %v holds %d elements",
			name, shape, n)
	}
	return Tensor{Name: name, DType: dtype, Shape: append([]uint64(nil), shape...), addr: ptr, dev: int32(device) + 1}, nil
}

// NewTensor describes data (F32 for float32, F64 for float64) with the given shape, whose
// element count must be len(data).
func NewTensor[T Float](name string, data []T, shape ...uint64) (Tensor, error) {
	var zero T
	dtype := F32
	if unsafe.Sizeof(zero) == 8 {
		dtype = F64
	}
	return newTensor(name, data, dtype, shape)
}

// NewTensor16 describes 16-bit floats stored as their bit patterns: dtype F16 or BF16.
func NewTensor16(name string, bits []uint16, dtype DType, shape ...uint64) (Tensor, error) {
	if dtype != F16 && dtype != BF16 {
		return Tensor{}, errorf(StatusInvalidArgument, "uint16 data needs dtype F16 or BF16, not %d", dtype)
	}
	return newTensor(name, bits, dtype, shape)
}

func newTensor[T any](name string, data []T, dtype DType, shape []uint64) (Tensor, error) {
	n := uint64(1)
	for _, d := range shape {
		n *= d
	}
	if n != uint64(len(data)) {
		return Tensor{}, errorf(StatusShapeMismatch, "tensor %s: the slice holds %d elements, the shape %v %d",
			name, len(data), shape, n)
	}
	t := Tensor{Name: name, DType: dtype, Shape: append([]uint64(nil), shape...)}
	if len(data) > 0 {
		t.ptr = unsafe.Pointer(&data[0])
		t.keep = data
		t.bytes = uintptr(len(data)) * dtype.size()
	}
	return t, nil
}

// ModuleValues is one figure per module (in the set's module order) and over all weights.
type ModuleValues struct {
	PerModule []float64
	Total     float64
}

// ModuleGeometry compares one module of sets a and b.
type ModuleGeometry struct {
	Numel    uint64  // elements of the module's weights
	Distance float64 // ||a - b||
	NormA    float64 // ||a||
	NormB    float64 // ||b||
	Relative float64 // ||a - b|| / ||a||
	Cosine   float64 // <a, b> / (||a|| ||b||)
}

// Comparison is the geometry of every module of a, and over all weights.
type Comparison struct {
	PerModule []ModuleGeometry
	Total     ModuleGeometry
}

// Params is a parameter set: named tensors grouped into modules, loaded from a safetensors file
// (LoadParams, LoadParamsMapped), wrapped around Go slices (WrapParams) or cloned. Close frees it; a finalizer
// frees a forgotten one. Several goroutines may read a set at once; a call that writes into it
// (as the receiver of Interpolate, InterpolateModule, Rewind, or a regrouping) needs it alone.
type Params struct {
	ptr  *C.tl_params
	hold *wrapHold // the wrapped slices, nil for a loaded or cloned set
}

func newParams(ptr *C.tl_params, hold *wrapHold) *Params {
	p := &Params{ptr: ptr, hold: hold}
	runtime.SetFinalizer(p, (*Params).Close)
	return p
}

// LoadParams loads a safetensors file into memory the set owns: the set is a snapshot, and
// truncating or rewriting the file afterwards changes nothing in it (the file itself is never
// modified). A missing file, or a path that is not a regular file (a directory, a FIFO), is
// ErrIO; a malformed one ErrFormat.
func LoadParams(ctx *Context, path string) (*Params, error) {
	return loadParams(ctx, path, false)
}

// LoadParamsMapped is LoadParams with the file mapped (private, copy-on-write) instead of copied:
// pages are read when first used, and writes into the set never reach the file. The file must not
// be truncated or modified until the set is closed: a truncated file stops the process (SIGBUS)
// when a lost page is touched, and a file rewritten in place changes the set's weights under it.
// For files larger than the memory a copy may take; LoadParams is the safe default.
func LoadParamsMapped(ctx *Context, path string) (*Params, error) {
	return loadParams(ctx, path, true)
}

// LoadCheckpoint loads a checkpoint as it is kept: a safetensors file, a folder holding
// model.safetensors, or a sharded checkpoint (its folder or its model.safetensors.index.json),
// copied into memory the set owns. The shards are checked against the index (StatusFormat naming
// the tensor at fault); the files must not be truncated while the call reads them.
func LoadCheckpoint(ctx *Context, path string) (*Params, error) {
	h, err := ctx.handle()
	if err != nil {
		return nil, err
	}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var ptr *C.tl_params
	err = call(func() C.enum_tl_status { return C.tl_params_load_checkpoint(h, cpath, &ptr) })
	runtime.KeepAlive(ctx)
	if err != nil {
		return nil, err
	}
	return newParams(ptr, nil), nil
}

func loadParams(ctx *Context, path string, mapped bool) (*Params, error) {
	h, err := ctx.handle()
	if err != nil {
		return nil, err
	}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var ptr *C.tl_params
	err = call(func() C.enum_tl_status {
		if mapped {
			return C.tl_params_load_mapped(h, cpath, &ptr)
		}
		return C.tl_params_load(h, cpath, &ptr)
	})
	runtime.KeepAlive(ctx)
	if err != nil {
		return nil, err
	}
	return newParams(ptr, nil), nil
}

// WrapParams makes a set over the tensors' slices, without a copy (Go >= 1.21: the slices are
// pinned until Close; older toolchains work on C copies that are kept in step with the slices).
// The slices must not overlap, and must not be written by Go while a call uses the set. On the
// copying path (Go < 1.21, or the transferlens_copy tag) every call refreshes the copies, so a
// wrapped set must not be used by two goroutines at once there.
func WrapParams(ctx *Context, tensors []Tensor) (*Params, error) {
	h, err := ctx.handle()
	if err != nil {
		return nil, err
	}
	n := len(tensors)
	// Overlapping slices are refused here: the copying path would hide them from the library.
	order := make([]int, 0, n)
	for i, t := range tensors {
		if t.ptr != nil {
			order = append(order, i)
		}
	}
	sort.Slice(order, func(x, y int) bool { return uintptr(tensors[order[x]].ptr) < uintptr(tensors[order[y]].ptr) })
	for k := 1; k < len(order); k++ {
		prev, cur := tensors[order[k-1]], tensors[order[k]]
		if uintptr(prev.ptr)+prev.bytes > uintptr(cur.ptr) {
			return nil, errorf(StatusInvalidArgument, "tensors %s and %s overlap in memory (wrap tied weights once)",
				prev.Name, cur.Name)
		}
	}
	// The descriptions live in C memory for the call (names and shapes are copied by the library).
	var raw *C.tl_tensor
	var cmem []unsafe.Pointer
	defer func() {
		for _, m := range cmem {
			C.free(m)
		}
	}()
	alloc := func(bytes uintptr) unsafe.Pointer {
		if bytes == 0 {
			bytes = 1
		}
		m := C.malloc(C.size_t(bytes))
		if m == nil {
			panic("transferlens: out of memory")
		}
		cmem = append(cmem, m)
		return m
	}
	hold := &wrapHold{}
	if n > 0 {
		raw = (*C.tl_tensor)(alloc(uintptr(n) * unsafe.Sizeof(C.tl_tensor{})))
		views := unsafe.Slice(raw, n)
		for i, t := range tensors {
			name := C.CString(t.Name)
			cmem = append(cmem, unsafe.Pointer(name))
			views[i] = C.tl_tensor{name: name, dtype: C.tl_dtype(t.DType), ndim: C.size_t(len(t.Shape)), device: C.int32_t(t.dev - 1)}
			if len(t.Shape) > 0 {
				shape := (*C.uint64_t)(alloc(uintptr(len(t.Shape)) * 8))
				copy(unsafe.Slice((*uint64)(unsafe.Pointer(shape)), len(t.Shape)), t.Shape)
				views[i].shape = shape
			}
			if t.ptr != nil {
				views[i].data = hold.hostPtr(t.ptr, t.bytes)
			} else if t.addr != 0 {
				// Device memory: the address is the library's to use in place, never Go's.
				views[i].data = C.tl_go_device_address(C.uintptr_t(t.addr))
			}
		}
	}
	var ptr *C.tl_params
	err = call(func() C.enum_tl_status { return C.tl_params_wrap(h, raw, C.size_t(n), &ptr) })
	runtime.KeepAlive(ctx)
	if err != nil {
		hold.release()
		return nil, err
	}
	return newParams(ptr, hold), nil
}

// Close frees the set (and unpins or frees what it wrapped); closing twice is a no-op.
func (p *Params) Close() error {
	if p != nil && p.ptr != nil {
		C.tl_params_destroy(p.ptr)
		p.ptr = nil
		if p.hold != nil {
			p.hold.release()
			p.hold = nil
		}
		runtime.SetFinalizer(p, nil)
	}
	return nil
}

func (p *Params) handle() (*C.tl_params, error) {
	if p == nil || p.ptr == nil {
		return nil, errorf(StatusNullArgument, "use of a closed or nil Params")
	}
	return p.ptr, nil
}

// use is handle for a call that reads the set: a wrapped set's C copies (if any) catch up
// with the slices first.
func (p *Params) use() (*C.tl_params, error) {
	h, err := p.handle()
	if err == nil && p.hold != nil {
		p.hold.syncIn()
	}
	return h, err
}

// written follows a call that wrote into the set: the slices get the results.
func (p *Params) written() {
	if p.hold != nil {
		p.hold.syncBack()
	}
}

// Clone makes a deep copy in memory the new set owns: a place to write interpolations into.
func (p *Params) Clone() (*Params, error) {
	h, err := p.use()
	if err != nil {
		return nil, err
	}
	var ptr *C.tl_params
	err = call(func() C.enum_tl_status { return C.tl_params_clone(h, &ptr) })
	runtime.KeepAlive(p)
	if err != nil {
		return nil, err
	}
	return newParams(ptr, nil), nil
}

// Save writes the set as a safetensors file, atomically.
func (p *Params) Save(path string) error {
	h, err := p.use()
	if err != nil {
		return err
	}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	err = call(func() C.enum_tl_status { return C.tl_params_save(h, cpath) })
	runtime.KeepAlive(p)
	return err
}

// SetGrouping regroups the weights: depth (>= 1) is read for GroupDepth only, prefixes and
// unmatched for GroupPrefixes only. On failure the grouping is unchanged.
func (p *Params) SetGrouping(g Grouping, depth int, prefixes []string, unmatched Unmatched) error {
	h, err := p.handle()
	if err != nil {
		return err
	}
	if depth < 0 || uint64(depth) > 0xffffffff {
		return errorf(StatusInvalidArgument, "depth %d out of range", depth)
	}
	var list **C.char
	if len(prefixes) > 0 {
		mem := C.malloc(C.size_t(len(prefixes)) * C.size_t(unsafe.Sizeof((*C.char)(nil))))
		if mem == nil {
			panic("transferlens: out of memory")
		}
		defer C.free(mem)
		list = (**C.char)(mem)
		cs := unsafe.Slice(list, len(prefixes))
		for i, s := range prefixes {
			cs[i] = C.CString(s)
			defer C.free(unsafe.Pointer(cs[i]))
		}
	}
	err = call(func() C.enum_tl_status {
		return C.tl_params_set_grouping(h, C.tl_module_grouping(g), C.uint32_t(depth), list, C.size_t(len(prefixes)),
			C.tl_unmatched(unmatched))
	})
	runtime.KeepAlive(p)
	return err
}

// GroupByFirst groups by the first name component (the default).
func (p *Params) GroupByFirst() error { return p.SetGrouping(GroupFirst, 0, nil, UnmatchedOwnGroup) }

// GroupByDepth groups by the first depth name components.
func (p *Params) GroupByDepth(depth int) error {
	return p.SetGrouping(GroupDepth, depth, nil, UnmatchedOwnGroup)
}

// GroupByPrefixes groups by explicit prefixes.
func (p *Params) GroupByPrefixes(prefixes []string, unmatched Unmatched) error {
	return p.SetGrouping(GroupPrefixes, 0, prefixes, unmatched)
}

// GroupByTensor makes every tensor its own module.
func (p *Params) GroupByTensor() error { return p.SetGrouping(GroupTensor, 0, nil, UnmatchedOwnGroup) }

// ModuleCount returns the number of modules (0 for a closed set).
func (p *Params) ModuleCount() int {
	if p == nil {
		return 0
	}
	n := int(C.tl_params_module_count(p.ptr))
	runtime.KeepAlive(p)
	return n
}

// TensorCount returns the number of tensors, weights and carried-through ones.
func (p *Params) TensorCount() int {
	if p == nil {
		return 0
	}
	n := int(C.tl_params_tensor_count(p.ptr))
	runtime.KeepAlive(p)
	return n
}

// ModuleName returns the name of module i; ErrNotFound when i is out of range.
func (p *Params) ModuleName(i int) (string, error) {
	h, err := p.handle()
	if err != nil {
		return "", err
	}
	if i < 0 {
		return "", errorf(StatusNotFound, "module %d", i)
	}
	n := C.tl_params_module_name(h, C.size_t(i), nil, 0) // the length, with the NUL
	if n == 0 {
		runtime.KeepAlive(p)
		return "", errorf(StatusNotFound, "module %d of a set of %d modules", i, p.ModuleCount())
	}
	buf := (*C.char)(C.malloc(n))
	defer C.free(unsafe.Pointer(buf))
	C.tl_params_module_name(h, C.size_t(i), buf, n)
	runtime.KeepAlive(p)
	return C.GoStringN(buf, C.int(n-1)), nil
}

// ModuleNames returns every module's name, in module order.
func (p *Params) ModuleNames() ([]string, error) {
	names := make([]string, p.ModuleCount())
	for i := range names {
		var err error
		if names[i], err = p.ModuleName(i); err != nil {
			return nil, err
		}
	}
	return names, nil
}

// FindModule returns the index of the module called name; ErrNotFound when there is none.
func (p *Params) FindModule(name string) (int, error) {
	h, err := p.handle()
	if err != nil {
		return 0, err
	}
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	var out C.size_t
	err = call(func() C.enum_tl_status { return C.tl_params_find_module(h, cname, &out) })
	runtime.KeepAlive(p)
	return int(out), err
}

// tensorCopy returns a copy of the weight tensor called name, whose dtype must satisfy want.
func tensorCopy[T any](p *Params, name string, want func(DType) bool) ([]T, DType, error) {
	h, err := p.use()
	if err != nil {
		return nil, 0, err
	}
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	var dt C.tl_dtype
	var data unsafe.Pointer
	var n C.uint64_t
	err = call(func() C.enum_tl_status { return C.tl_params_tensor_data(h, cname, &dt, &data, &n) })
	if err != nil {
		return nil, 0, err
	}
	d := DType(dt)
	if !want(d) {
		return nil, d, errorf(StatusUnsupportedDType, "tensor %s has dtype %d", name, d)
	}
	out := make([]T, int(n))
	if n > 0 {
		copy(out, unsafe.Slice((*T)(data), int(n)))
	}
	runtime.KeepAlive(p)
	return out, d, nil
}

// TensorF32 returns a copy of the F32 weight tensor called name (ErrNotFound when there is
// none, ErrUnsupportedDType for another dtype or a carried-through tensor).
func (p *Params) TensorF32(name string) ([]float32, error) {
	out, _, err := tensorCopy[float32](p, name, func(d DType) bool { return d == F32 })
	return out, err
}

// TensorF64 returns a copy of the F64 weight tensor called name.
func (p *Params) TensorF64(name string) ([]float64, error) {
	out, _, err := tensorCopy[float64](p, name, func(d DType) bool { return d == F64 })
	return out, err
}

// Tensor16 returns a copy of the F16 or BF16 weight tensor called name, as bit patterns.
func (p *Params) Tensor16(name string) ([]uint16, DType, error) {
	return tensorCopy[uint16](p, name, func(d DType) bool { return d == F16 || d == BF16 })
}

// two returns the handles of two sets read by one call.
func two(a, b *Params) (*C.tl_params, *C.tl_params, error) {
	ha, err := a.use()
	if err != nil {
		return nil, nil, err
	}
	hb, err := b.use()
	return ha, hb, err
}

// Distance returns ||p_i - other_i|| per module of p's grouping and the total. The sets must
// hold the same weights (names and shapes; dtypes may differ): otherwise ErrShapeMismatch.
func (p *Params) Distance(ctx *Context, other *Params) (ModuleValues, error) {
	h, err := ctx.handle()
	if err != nil {
		return ModuleValues{}, err
	}
	ha, hb, err := two(p, other)
	if err != nil {
		return ModuleValues{}, err
	}
	out := ModuleValues{PerModule: make([]float64, p.ModuleCount())}
	var total C.double
	err = call(func() C.enum_tl_status {
		return C.tl_params_distance(h, ha, hb, f64ptrOrDummy(out.PerModule), &total)
	})
	runtime.KeepAlive(ctx)
	runtime.KeepAlive(p)
	runtime.KeepAlive(other)
	out.Total = float64(total)
	return out, err
}

// Norms returns ||p_i|| per module and of all weights.
func (p *Params) Norms(ctx *Context) (ModuleValues, error) {
	h, err := ctx.handle()
	if err != nil {
		return ModuleValues{}, err
	}
	hp, err := p.use()
	if err != nil {
		return ModuleValues{}, err
	}
	out := ModuleValues{PerModule: make([]float64, p.ModuleCount())}
	var total C.double
	err = call(func() C.enum_tl_status { return C.tl_params_norms(h, hp, f64ptrOrDummy(out.PerModule), &total) })
	runtime.KeepAlive(ctx)
	runtime.KeepAlive(p)
	out.Total = float64(total)
	return out, err
}

// Compare returns the distance, norms, relative distance and cosine per module of p (as a)
// against other (as b), and over all weights. A module all zeros in either is ErrDegenerateInput.
func (p *Params) Compare(ctx *Context, other *Params) (Comparison, error) {
	h, err := ctx.handle()
	if err != nil {
		return Comparison{}, err
	}
	ha, hb, err := two(p, other)
	if err != nil {
		return Comparison{}, err
	}
	m := p.ModuleCount()
	raw := make([]C.tl_module_geometry, m+1) // the modules, then the total
	err = call(func() C.enum_tl_status { return C.tl_params_compare(h, ha, hb, &raw[0], &raw[m]) })
	runtime.KeepAlive(ctx)
	runtime.KeepAlive(p)
	runtime.KeepAlive(other)
	if err != nil {
		return Comparison{}, err
	}
	conv := func(g C.tl_module_geometry) ModuleGeometry {
		return ModuleGeometry{uint64(g.numel), float64(g.distance), float64(g.norm_a), float64(g.norm_b),
			float64(g.relative), float64(g.cosine)}
	}
	out := Comparison{PerModule: make([]ModuleGeometry, m), Total: conv(raw[m])}
	for i := 0; i < m; i++ {
		out.PerModule[i] = conv(raw[i])
	}
	return out, nil
}

// writer runs a call that writes into p from a and b.
func (p *Params) writer(ctx *Context, a, b *Params, f func(ctx *C.tl_context, a, b, out *C.tl_params) C.enum_tl_status) error {
	h, err := ctx.handle()
	if err != nil {
		return err
	}
	ha, hb, err := two(a, b)
	if err != nil {
		return err
	}
	hp, err := p.use()
	if err != nil {
		return err
	}
	err = call(func() C.enum_tl_status { return f(h, ha, hb, hp) })
	if err == nil {
		p.written()
	}
	runtime.KeepAlive(ctx)
	runtime.KeepAlive(a)
	runtime.KeepAlive(b)
	runtime.KeepAlive(p)
	return err
}

// Interpolate sets p = (1 - lambda) a + lambda b (any finite lambda; outside [0, 1] it
// extrapolates). p must hold a's weights and be neither a nor b: a Clone of a, or a wrapped set.
func (p *Params) Interpolate(ctx *Context, a, b *Params, lambda float64) error {
	return p.writer(ctx, a, b, func(c *C.tl_context, ha, hb, out *C.tl_params) C.enum_tl_status {
		return C.tl_params_interpolate(c, ha, hb, C.double(lambda), out)
	})
}

// InterpolateModule sets module `module` of p (an index into a's modules) to
// (1 - lambda) a + lambda b and every other weight to b.
func (p *Params) InterpolateModule(ctx *Context, a, b *Params, lambda float64, module int) error {
	if module < 0 {
		return errorf(StatusNotFound, "module %d", module)
	}
	return p.writer(ctx, a, b, func(c *C.tl_context, ha, hb, out *C.tl_params) C.enum_tl_status {
		return C.tl_params_interpolate_module(c, ha, hb, C.double(lambda), C.size_t(module), out)
	})
}

// Rewind sets module `module` of p to (1 - alpha) initial + alpha final and every other weight
// to final: alpha 0 rewinds the module to its initial value, bit for bit.
func (p *Params) Rewind(ctx *Context, initial, final *Params, module int, alpha float64) error {
	if module < 0 {
		return errorf(StatusNotFound, "module %d", module)
	}
	return p.writer(ctx, initial, final, func(c *C.tl_context, ha, hb, out *C.tl_params) C.enum_tl_status {
		return C.tl_params_rewind(c, ha, hb, C.size_t(module), C.double(alpha), out)
	})
}

// f64ptrOrDummy is f64ptr, except that an empty slice (a set without modules) gets a pointer
// to a scratch value: the per-module output may not be NULL.
func f64ptrOrDummy(s []float64) *C.double {
	if len(s) == 0 {
		var dummy [1]float64
		s = dummy[:]
	}
	return (*C.double)(unsafe.Pointer(&s[0]))
}
