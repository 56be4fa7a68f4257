; LLVM 19.1 SLP vectorizer miscompile, reduced from tttc's LLVM module for the streaming token
; step in tests/llvm_regression.rs (N = 2); tests/llvm/main.rs checks it, docs/backends.md
; ("The SLP vectorizer") tells the story.
;
; The function is straight-line code with no UB: no undef or poison, no flags, no alias facts,
; every store in bounds of its argument. Every value it stores is +0.0 (`opt -passes=instsimplify`
; folds every store to `store double 0.0`). `opt -passes=slp-vectorizer` vectorizes the eight
; stores to %q into one <8 x double> store whose operand bundle is [a1 a2 a0 a1 a2 a0 a1 a2], and
; the two stores to %p into a <2 x double> chain. %a0 also feeds the %p chain, but SLP builds
; that chain's first operand vector as `insertelement <2 x double> <poison, 0.0>, double poison, 0`:
; the scalar %a0 (0.0) became poison, so p[12] holds garbage after vectorization (NaN when run).
;
;   /usr/lib/llvm-19/bin/opt -S -passes=slp-vectorizer tests/llvm/slp_poison_lane.ll
;   /usr/lib/llvm-19/bin/opt -S -passes=slp-vectorizer,instsimplify tests/llvm/slp_poison_lane.ll
;     -> store <2 x double> <double poison, double 0.000000e+00>, ptr %p0
;
; It needs 512-bit vectors ("+avx512f", as on tttc's AVX-512 hosts); with AVX2 only the cost
; model picks other bundles and the output is right.
target datalayout = "e-m:e-p270:32:32-p271:32:32-p272:64:64-i64:64-i128:128-f80:128-n8:16:32:64-S128"
target triple = "x86_64-pc-linux-gnu"

define void @slp_case(ptr %p, ptr %q) #0 {
  %x0 = fadd double 0.000000e+00, 0.000000e+00
  %x1 = fadd double 0.000000e+00, 0.000000e+00
  %x2 = fadd double 0.000000e+00, 0.000000e+00
  %d = fdiv double 0.000000e+00, 1.000000e+00
  %a0 = fadd double %x0, %d
  %a1 = fadd double %x1, %d
  %a2 = fadd double %x2, %d
  %u0 = fmul double 0.000000e+00, %a0
  %v0 = fadd double %u0, 0.000000e+00
  %u1 = fmul double 0.000000e+00, 0.000000e+00
  %v1 = fadd double %u1, 0.000000e+00
  %w0 = fadd double 0.000000e+00, %v0
  %w1 = fadd double 0.000000e+00, %v1
  %y0 = fadd double 0.000000e+00, %w0
  %y1 = fadd double 0.000000e+00, %w1
  %m0 = fmul double 0.000000e+00, %y0
  %m1 = fmul double 0.000000e+00, %y1
  %n0 = fmul double 0.000000e+00, %m0
  %o0 = fmul double %n0, 0.000000e+00
  %s0 = fadd double 0.000000e+00, %o0
  %p0 = getelementptr inbounds i8, ptr %p, i64 96
  store double %s0, ptr %p0, align 8
  %n1 = fmul double 0.000000e+00, %m1
  %o1 = fmul double %n1, 0.000000e+00
  %s1 = fadd double %o1, 0.000000e+00
  %p1 = getelementptr inbounds i8, ptr %p, i64 104
  store double %s1, ptr %p1, align 8
  %g0 = fmul double 0.000000e+00, %a1
  %h0 = fmul double %g0, 0.000000e+00
  %r0 = fadd double %h0, 0.000000e+00
  %q0 = getelementptr inbounds i8, ptr %q, i64 128
  store double %r0, ptr %q0, align 8
  %g1 = fmul double 0.000000e+00, %a2
  %h1 = fmul double %g1, 0.000000e+00
  %r1 = fadd double %h1, 0.000000e+00
  %q1 = getelementptr inbounds i8, ptr %q, i64 136
  store double %r1, ptr %q1, align 8
  %g2 = fmul double 0.000000e+00, %a0
  %h2 = fmul double %g2, 0.000000e+00
  %r2 = fadd double %h2, 0.000000e+00
  %q2 = getelementptr inbounds i8, ptr %q, i64 144
  store double %r2, ptr %q2, align 8
  %g3 = fmul double 0.000000e+00, %a1
  %h3 = fmul double %g3, 0.000000e+00
  %r3 = fadd double %h3, 0.000000e+00
  %q3 = getelementptr inbounds i8, ptr %q, i64 152
  store double %r3, ptr %q3, align 8
  %g4 = fmul double 0.000000e+00, %a2
  %h4 = fmul double %g4, 0.000000e+00
  %r4 = fadd double %h4, 0.000000e+00
  %q4 = getelementptr inbounds i8, ptr %q, i64 160
  store double %r4, ptr %q4, align 8
  %g5 = fmul double 0.000000e+00, %a0
  %h5 = fmul double %g5, 0.000000e+00
  %r5 = fadd double %h5, 0.000000e+00
  %q5 = getelementptr inbounds i8, ptr %q, i64 168
  store double %r5, ptr %q5, align 8
  %g6 = fmul double 0.000000e+00, %a1
  %h6 = fmul double %g6, 0.000000e+00
  %r6 = fadd double %h6, 0.000000e+00
  %q6 = getelementptr inbounds i8, ptr %q, i64 176
  store double %r6, ptr %q6, align 8
  %g7 = fmul double 0.000000e+00, %a2
  %h7 = fmul double %g7, 0.000000e+00
  %r7 = fadd double %h7, 0.000000e+00
  %q7 = getelementptr inbounds i8, ptr %q, i64 184
  store double %r7, ptr %q7, align 8
  ret void
}

attributes #0 = { nounwind "target-features"="+avx512f" }
