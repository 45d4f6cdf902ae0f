"""The compiler: programs as typed µTOps with the memory they touch (builder), the matmul
compiler, the model compiler (graph, quantization) and the built-in models. Imports `isa`
only: what it produces runs on any backend."""
