module transferlens

// 1.19 is the oldest toolchain supported (Debian bookworm's golang-go); with Go >= 1.21 matrices
// are passed to C without copies (runtime.Pinner), with older toolchains they are copied.
go 1.19
