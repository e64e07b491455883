/*
 * spin-pv64.S - a guest that never stops on its own, x86_64 PV.
 *
 * For the debugger: it prints one line, then loops forever calling
 * spin_step, which counts in spin_count. It makes no hypercall in the loop,
 * so only the debugger's pause (or a breakpoint, or a watchpoint) stops it.
 * spin_step keeps a frame pointer and calls spin_leaf, so that backtrace,
 * next and finish have real frames to work on.
 */
#include "xen-pv64.inc"

    LAB_NOTES

    HYPERCALL_PAGE_DEFINE

    .section .text.entry, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    cld
    lea stack_top(%rip), %rsp
    xor %ebp, %ebp
    print_lit "spin-pv64: spinning\n"
spin_loop:
    call spin_step
    jmp spin_loop
    .size _start, . - _start

    .text
/* spin_step: one iteration, with a frame (push rbp; mov rsp, rbp). */
    .type spin_step, @function
spin_step:
    push %rbp
    mov %rsp, %rbp
    call spin_leaf
    incq spin_count(%rip)
    pop %rbp
    ret
    .size spin_step, . - spin_step

/* spin_leaf: a few instructions of work, with a frame too. */
    .type spin_leaf, @function
spin_leaf:
    push %rbp
    mov %rsp, %rbp
    mov spin_count(%rip), %rax
    add $3, %rax
    mov %rax, spin_last(%rip)
    pop %rbp
    ret
    .size spin_leaf, . - spin_leaf

    .data
    .balign 8
spin_count:         .quad 0             /* iterations of spin_step so far */
spin_last:          .quad 0             /* written by spin_leaf every iteration */

    .bss
    .balign 16
stack:              .skip 8192
stack_top:
