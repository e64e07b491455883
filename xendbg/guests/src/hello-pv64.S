/*
 * hello-pv64.S - the first xendbg lab guest, x86_64 PV.
 *
 * It checks the basic contract between a PV guest and Xen: the domain
 * builder's start_info, the hypercall page and the direct syscall path,
 * hypercall error codes, the p2m/m2p pair, the console ring with its event
 * channel, and a trap bounced through the guest's trap table and returned
 * from with the iret hypercall. Each step prints "CHECK <name>: ok" or
 * "CHECK <name>: FAIL <why>"; then "RESULT: PASS" or "RESULT: FAIL", and the
 * guest powers itself off.
 *
 * Entry state (Xen): ring 3 in guest kernel mode, CS = 0xe033,
 * RSI = VA of start_info, RSP = bootstrap stack, event delivery masked
 * (evtchn_upcall_mask = 1 in vcpu_info; this guest registers no callbacks).
 *
 * Registers in main: R15 = start_info. Routines from xen-pv64.inc preserve
 * everything but RAX.
 */
#include "xen-pv64.inc"

#define INT3_MAGIC      0x5eedc0de1badb002  /* kept in RBX across the int3 */
#define INT3_BAD_RIP    1                   /* bits of int3_bad, set by trap_int3 */
#define INT3_BAD_CS     2
#define INT3_BAD_RSP    4
#define P2M_CHECK_PFNS  16
#define RING_YIELDS_MAX 1000

/* int3_fail SRC, "WHY": one failed part of the int3 check, then finish. */
.macro int3_fail src, why:vararg
    check_fail_val int3, \src, \why
    jmp step11_finish
.endm

/* ---- Xen ELF notes: what Xen's domain builder reads before loading us ------ */
    LAB_NOTES

    HYPERCALL_PAGE_DEFINE

/* ---- entry ------------------------------------------------------------------- */
    .section .text.entry, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    /* Xen jumps here with RSI = start_info and RSP = its bootstrap stack.
     * Keep both for the debugger, then switch to our own .bss stack. */
    cld
    mov %rsi, start_info_va(%rip)
    mov %rsp, boot_rsp(%rip)
    lea stack_top(%rip), %rsp
    jmp main
    .size _start, . - _start

    .text
    .type main, @function
main:
    mov start_info_va(%rip), %r15

/* Step 1: the magic in a single console_io write (Xen copies the bytes to the
 * domain's console and returns 0), then the other start_info fields. */
step1_hello:
    lea hello_line(%rip), %rdi
    lea str_hello_prefix(%rip), %rsi
    mov $64, %edx
    call copy_str
    mov %rax, %rdi
    lea SI_magic(%r15), %rsi
    mov $SI_MAGIC_SIZE, %edx
    call copy_str
    movw $0x000a, (%rax)                /* "\n\0" */
    lea hello_line(%rip), %rdi
hello_write:
    call print_str
    mov %rax, hello_rc(%rip)
step1_start_info:
    print_field "start_info: nr_pages=", SI_nr_pages(%r15)
    print_field " shared_info=", SI_shared_info(%r15)
    print_field32 " flags=", SI_flags(%r15)
    call print_nl
    print_field "start_info: store_mfn=", SI_store_mfn(%r15)
    print_field32 " store_evtchn=", SI_store_evtchn(%r15)
    print_field " console_mfn=", SI_console_mfn(%r15)
    print_field32 " console_evtchn=", SI_console_evtchn(%r15)
    call print_nl
    print_field "start_info: pt_base=", SI_pt_base(%r15)
    print_field " nr_pt_frames=", SI_nr_pt_frames(%r15)
    print_field " mfn_list=", SI_mfn_list(%r15)
    print_field " mod_start=", SI_mod_start(%r15)
    print_field " mod_len=", SI_mod_len(%r15)
    call print_nl
    print_lit "start_info: cmd_line=\""
    lea SI_cmd_line(%r15), %rdi
    mov $SI_CMD_LINE_SIZE, %esi
    call print_strn
    print_lit "\"\n"

/* Step 2: the domain builder wrote "xen-3.0-x86_64" at the start of magic. */
step2_magic:
    lea SI_magic(%r15), %rdi
    lea str_magic_want(%rip), %rsi
    call str_prefix
    test %eax, %eax
    jz 1f
    check_ok magic
    jmp step3_hypercall_page
1:  check_fail magic, "magic does not begin with xen-3.0-x86_64"

/* Step 3: xen_version(XENVER_version, NULL) through the stub that Xen wrote
 * into the hypercall page; Xen returns major << 16 | minor. */
step3_hypercall_page:
    mov $XENVER_version, %edi
    xor %esi, %esi
    HYPERCALL __HYPERVISOR_xen_version
    mov %rax, ver_page(%rip)
    shr $16, %rax                       /* major; a negative RAX gives a huge value */
    cmp $3, %rax
    jb 1f
    cmp $0xffff, %rax
    ja 1f
    check_ok hypercall_page
    jmp step4_direct_hypercall
1:  check_fail_val hypercall_page, ver_page(%rip), "xen_version returned"

/* Step 4: the same hypercall as a bare syscall from guest kernel mode; Xen
 * must answer it as it answered the stub. */
step4_direct_hypercall:
    mov $XENVER_version, %edi
    xor %esi, %esi
direct_hypercall_site:
    HYPERCALL_DIRECT __HYPERVISOR_xen_version
    mov %rax, ver_direct(%rip)
    cmp ver_page(%rip), %rax
    jne 1f
    check_ok direct_hypercall
    jmp step5_console_io
1:  check_fail_start direct_hypercall, "syscall returned"
    mov ver_direct(%rip), %rdi
    call print_hex
    print_field " but the hypercall page returned ", ver_page(%rip)
    call print_nl

/* Step 5: the console_io write of step 1 returned 0. */
step5_console_io:
    cmpq $0, hello_rc(%rip)
    check_cond e, console_io, hello_rc(%rip), "console_io write returned"

/* Step 6a: stub 63 of the page; Xen has no hypercall 63: -ENOSYS. */
step6_enosys:
    xor %edi, %edi
    xor %esi, %esi
    xor %edx, %edx
    HYPERCALL HYPERCALL_UNUSED_63
    mov %rax, enosys_rc(%rip)
    cmp $-ENOSYS, %rax
    check_cond e, enosys, enosys_rc(%rip), "hypercall 63 returned"

/* Step 6b: console_io(write, 8, 0x1000): nothing is mapped there, so Xen's
 * copy from guest memory fails: -EFAULT. */
step6_efault:
    mov $CONSOLEIO_write, %edi
    mov $8, %esi
    mov $0x1000, %edx
    HYPERCALL __HYPERVISOR_console_io
    mov %rax, efault_rc(%rip)
    cmp $-EFAULT, %rax
    check_cond e, efault, efault_rc(%rip), "console_io from an unmapped buffer returned"

/* Step 7: m2p[mfn_list[pfn]] == pfn for pfn 0..15 and for start_info's own
 * pfn (Xen keeps the read-only M2P at M2P_VIRT_START in step with the p2m
 * that the builder wrote), and the p2m is not the identity. */
step7_m2p:
    mov SI_mfn_list(%r15), %r12         /* R12 = p2m: mfn_list[pfn] */
    movabs $M2P_VIRT_START, %r13        /* R13 = m2p: m2p[mfn] */
    xor %r14d, %r14d                    /* R14 = how many pfns have mfn != pfn */
    xor %ebx, %ebx                      /* RBX = pfn */
m2p_loop:
    call m2p_check_pfn
    jne m2p_bad
    inc %rbx
    cmp $P2M_CHECK_PFNS, %rbx
    jb m2p_loop
m2p_start_info:
    mov %r15, %rbx
    movabs $VIRT_BASE, %rax
    sub %rax, %rbx
    shr $PAGE_SHIFT, %rbx               /* start_info's pfn */
    mov %rbx, start_info_pfn(%rip)
    call m2p_check_pfn
    jne m2p_bad
    test %r14, %r14
    jz m2p_identity
    check_ok m2p
    jmp step8_console_ring
m2p_identity:
    check_fail m2p, "the p2m is the identity for the pfns checked"
    jmp step8_console_ring
m2p_bad:
    check_fail_start m2p, "m2p[mfn_list[pfn]] != pfn for pfn"
    mov %rbx, %rdi
    call print_hex
    print_field ": mfn=", m2p_mfn(%rip)
    print_field " m2p[mfn]=", m2p_pfn(%rip)
    call print_nl

/* Step 8: put a line in the console ring, publish it (barrier, then
 * out_prod), kick the console event channel; the backend consumes the bytes
 * and advances out_cons. Yield until it has. */
step8_console_ring:
    mov SI_console_mfn(%r15), %rax
    movabs $M2P_VIRT_START, %rcx
    mov (%rcx,%rax,8), %rax             /* console pfn = m2p[console_mfn] */
    mov %rax, console_pfn(%rip)
    cmp SI_nr_pages(%r15), %rax
    jae ring_bad_pfn
    shl $PAGE_SHIFT, %rax
    movabs $VIRT_BASE, %rcx
    add %rcx, %rax
    mov %rax, console_ring_va(%rip)
    mov %rax, %r12                      /* R12 = struct xencons_interface */
    mov XENCONS_out_prod(%r12), %r13d   /* R13D = our out_prod */
    lea str_ring_msg(%rip), %rsi
ring_copy:
    movzbl (%rsi), %eax
    test %al, %al
    jz ring_publish
    mov %r13d, %ecx
    and $(XENCONS_OUT_SIZE - 1), %ecx
    mov %al, XENCONS_out(%r12,%rcx)
    inc %r13d
    inc %rsi
    jmp ring_copy
ring_publish:
    lock addl $0, (%rsp)                /* barrier: the bytes before the index */
    mov %r13d, XENCONS_out_prod(%r12)
ring_notify:
    mov SI_console_evtchn(%r15), %eax
    mov %eax, evtchn_send_arg(%rip)     /* struct evtchn_send {u32 port} */
    mov $EVTCHNOP_send, %edi
    lea evtchn_send_arg(%rip), %rsi
    HYPERCALL __HYPERVISOR_event_channel_op
    mov %rax, ring_send_rc(%rip)
ring_drain:
    mov XENCONS_out_cons(%r12), %eax
    cmp XENCONS_out_prod(%r12), %eax
    je ring_drained
    cmpq $RING_YIELDS_MAX, ring_yields(%rip)
    jae ring_drained
    incq ring_yields(%rip)
    mov $SCHEDOP_yield, %edi
    xor %esi, %esi
    HYPERCALL __HYPERVISOR_sched_op
    jmp ring_drain
ring_drained:
    cmpq $0, ring_send_rc(%rip)
    jne ring_bad_send
    mov XENCONS_out_cons(%r12), %eax
    cmp XENCONS_out_prod(%r12), %eax
    jne ring_not_drained
    check_ok console_ring
    jmp step9_trap_table
ring_bad_pfn:
    check_fail_val console_ring, console_pfn(%rip), "console pfn = m2p[console_mfn] >= nr_pages:"
    jmp step9_trap_table
ring_bad_send:
    check_fail_val console_ring, ring_send_rc(%rip), "event channel send returned"
    jmp step9_trap_table
ring_not_drained:
    check_fail_start console_ring, "ring not drained after 1000 yields:"
    print_field32 "out_cons=", XENCONS_out_cons(%r12)
    print_field32 " out_prod=", XENCONS_out_prod(%r12)
    call print_nl

/* Step 9: register a handler for vector 3 (#BP), DPL 3 so that an int3 from
 * our ring-3 kernel is allowed. Xen copies the table and returns 0. */
step9_trap_table:
    lea trap_table(%rip), %rdi
    HYPERCALL __HYPERVISOR_set_trap_table
    mov %rax, trap_table_rc(%rip)
    test %rax, %rax
    check_cond z, trap_table, trap_table_rc(%rip), "set_trap_table returned"

/* Step 10: int3. Xen takes the #BP, builds a bounce frame on our stack
 * (RCX, R11, RIP, CS, RFLAGS, RSP, SS) and enters trap_int3, which returns
 * with the iret hypercall to int3_return with RSP as it was. */
step10_int3:
    cmpq $0, trap_table_rc(%rip)
    jne int3_skipped                    /* with no handler Xen would kill us */
    movabs $INT3_MAGIC, %rbx
    mov %rsp, int3_rsp_before(%rip)
int3_site:
    int3
int3_return:
    incq int3_resumed(%rip)
    mov %rsp, int3_rsp_after(%rip)
    mov %rbx, int3_rbx_after(%rip)
int3_verify:
    cmpq $1, int3_count(%rip)
    jne int3_bad_count
    testq $INT3_BAD_RIP, int3_bad(%rip)
    jnz int3_bad_rip
    testq $INT3_BAD_CS, int3_bad(%rip)
    jnz int3_bad_cs
    testq $INT3_BAD_RSP, int3_bad(%rip)
    jnz int3_bad_rsp
    cmpq $1, int3_resumed(%rip)
    jne int3_bad_resumed
    movabs $INT3_MAGIC, %rax
    cmp %rax, int3_rbx_after(%rip)
    jne int3_bad_rbx
    mov int3_rsp_before(%rip), %rax
    cmp %rax, int3_rsp_after(%rip)
    jne int3_bad_rsp_after
    check_ok int3
    jmp step11_finish
int3_skipped:
    check_fail int3, "skipped because set_trap_table failed"
    jmp step11_finish
int3_bad_count:
    int3_fail int3_count(%rip), "handler ran (times):"
int3_bad_rip:
    int3_fail int3_frame+BF_rip(%rip), "frame RIP is not int3_return:"
int3_bad_cs:
    int3_fail int3_frame+BF_cs(%rip), "frame CS is not 0xe030:"
int3_bad_rsp:
    int3_fail int3_frame+BF_rsp(%rip), "frame RSP is not the RSP before int3:"
int3_bad_resumed:
    int3_fail int3_resumed(%rip), "execution resumed at int3_return (times):"
int3_bad_rbx:
    int3_fail int3_rbx_after(%rip), "RBX not preserved:"
int3_bad_rsp_after:
    int3_fail int3_rsp_after(%rip), "RSP after iret is not the RSP before int3:"

/* Step 11: the RESULT line, then SCHEDOP_shutdown(SHUTDOWN_poweroff). */
step11_finish:
    jmp finish
    .size main, . - main

/* m2p_check_pfn: RBX = pfn, R12 = p2m, R13 = m2p. Sets ZF if
 * m2p[mfn_list[pfn]] == pfn; counts mfn != pfn in R14. Clobbers RAX, RCX. */
    .type m2p_check_pfn, @function
m2p_check_pfn:
    mov (%r12,%rbx,8), %rax             /* mfn = mfn_list[pfn] */
    mov %rax, m2p_mfn(%rip)
    cmp %rax, %rbx
    je 1f
    inc %r14
1:  mov (%r13,%rax,8), %rcx             /* m2p[mfn] */
    mov %rcx, m2p_pfn(%rip)
    cmp %rcx, %rbx
    ret
    .size m2p_check_pfn, . - m2p_check_pfn

/*
 * trap_int3: the #BP handler named in trap_table. Frame at RSP (from Xen):
 * RCX, R11, RIP, CS, RFLAGS, RSP, SS. It copies the frame to int3_frame,
 * checks RIP, CS and RSP, then returns through the iret stub of the
 * hypercall page, which pushes RCX, R11, RAX and issues hypercall 23 with
 * struct iret_context {rax, r11, rcx, flags, rip, cs, rflags, rsp, ss} at RSP.
 * Touches only RAX (restored before the iret), RCX and R11 (reloaded from the
 * frame); never RBX.
 */
    .balign 16
    .type trap_int3, @function
trap_int3:
    push %rax                           /* the frame is now at 8(%rsp) */
    incq int3_count(%rip)
    lea 8(%rsp), %rax
    mov %rax, int3_frame_va(%rip)
    .irp i, 0, 1, 2, 3, 4, 5, 6
    mov 8+\i*8(%rsp), %rax
    mov %rax, int3_frame+\i*8(%rip)
    .endr
trap_int3_check_rip:
    lea int3_return(%rip), %rax
    cmp %rax, 8+BF_rip(%rsp)
    je trap_int3_check_cs
    orq $INT3_BAD_RIP, int3_bad(%rip)
trap_int3_check_cs:
    movzwl 8+BF_cs(%rsp), %eax
    cmp $KERNEL_CS_RPL0, %eax
    je trap_int3_check_rsp
    orq $INT3_BAD_CS, int3_bad(%rip)
trap_int3_check_rsp:
    mov int3_rsp_before(%rip), %rax
    cmp %rax, 8+BF_rsp(%rsp)
    je trap_int3_iret
    orq $INT3_BAD_RSP, int3_bad(%rip)
trap_int3_iret:
    pop %rax
    pop %rcx                            /* the interrupted RCX and R11 */
    pop %r11
    pushq $0                            /* iret flags: not VGCF_in_syscall */
    jmp hypercall_page + __HYPERVISOR_iret * 32
    .size trap_int3, . - trap_int3

/* ---- read-only data ----------------------------------------------------------- */
    .section .rodata, "a", @progbits
str_hello_prefix:   .asciz "hello-pv64: magic="
str_magic_want:     .asciz "xen-3.0-x86_64"
str_ring_msg:       .asciz "hello from the console ring\n"

/* ---- data --------------------------------------------------------------------- */
    .data
    .balign 16
/* set_trap_table argument: struct trap_info[], ended by an all-zero entry */
trap_table:
    .byte 3                             /* vector: #BP */
    .byte 3                             /* flags: DPL 3 */
    .word FLAT_KERNEL_CS                /* cs */
    .long 0
    .quad trap_int3                     /* address */
    .quad 0, 0                          /* terminator */

evtchn_send_arg:    .long 0             /* struct evtchn_send {u32 port} */
    .balign 8
start_info_va:      .quad 0             /* RSI at entry */
boot_rsp:           .quad 0             /* RSP at entry (Xen's bootstrap stack) */
start_info_pfn:     .quad 0
hello_rc:           .quad -1            /* console_io result for the hello line */
ver_page:           .quad 0             /* xen_version via the hypercall page */
ver_direct:         .quad 0             /* xen_version via syscall */
enosys_rc:          .quad 0
efault_rc:          .quad 0
m2p_mfn:            .quad 0             /* last mfn_list[pfn] checked */
m2p_pfn:            .quad 0             /* last m2p[mfn] read */
console_pfn:        .quad 0
console_ring_va:    .quad 0
ring_send_rc:       .quad -1
ring_yields:        .quad 0
trap_table_rc:      .quad -1
int3_rsp_before:    .quad 0
int3_rsp_after:     .quad 0
int3_rbx_after:     .quad 0
int3_count:         .quad 0             /* times trap_int3 ran */
int3_bad:           .quad 0             /* INT3_BAD_* bits */
int3_resumed:       .quad 0             /* times int3_return ran */
int3_frame_va:      .quad 0             /* RSP at handler entry */
int3_frame:         .fill 7, 8, 0       /* copy of the bounce frame */

/* ---- bss ---------------------------------------------------------------------- */
    .bss
    .balign 16
hello_line:         .skip 128
stack:              .skip 16384         /* our stack; RSP starts at stack_top */
stack_top:
