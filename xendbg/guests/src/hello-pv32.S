/*
 * hello-pv32.S - the first xendbg lab guest, x86_32 PAE PV.
 *
 * The 32-bit twin of hello-pv64.S: the same steps and the same output (with
 * "hello-pv32"). It checks the domain builder's start_info, the hypercall
 * page and the direct int $0x82 path, hypercall error codes, the p2m/m2p
 * pair, the console ring with its event channel, and a trap bounced through
 * the guest's trap table and returned from with the iret hypercall. Each step
 * prints "CHECK <name>: ok" or "CHECK <name>: FAIL <why>"; then
 * "RESULT: PASS" or "RESULT: FAIL", and the guest powers itself off.
 *
 * Entry state (Xen): ring 1, CS = 0xe019, SS = DS = ES = 0xe021,
 * ESI = VA of start_info, ESP = bootstrap stack, event delivery masked
 * (evtchn_upcall_mask = 1 in vcpu_info; this guest registers no callbacks).
 *
 * Registers in main: EBP = start_info (never a hypercall argument).
 * Routines from xen-pv32.inc preserve everything but EAX.
 */
#include "xen-pv32.inc"

#define INT3_MAGIC      0x1badb002  /* kept in EBX across the int3 */
#define INT3_BAD_EIP    1           /* bits of int3_bad, set by trap_int3 */
#define INT3_BAD_CS     2
#define INT3_BAD_ESP    4           /* frame not right below the ESP before int3 */
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
    /* Xen jumps here with ESI = start_info and ESP = its bootstrap stack.
     * Keep both for the debugger, then switch to our own .bss stack. */
    cld
    mov %esi, start_info_va
    mov %esp, boot_esp
    mov $stack_top, %esp
    jmp main
    .size _start, . - _start

    .text
    .type main, @function
main:
    mov start_info_va, %ebp

/* Step 1: the magic in a single console_io write (Xen copies the bytes to the
 * domain's console and returns 0), then the other start_info fields. */
step1_hello:
    mov $hello_line, %eax
    mov $str_hello_prefix, %edx
    mov $64, %ecx
    call copy_str
    lea SI_magic(%ebp), %edx
    mov $SI_MAGIC_SIZE, %ecx
    call copy_str
    movw $0x000a, (%eax)                /* "\n\0" */
    mov $hello_line, %eax
hello_write:
    call print_str
    mov %eax, hello_rc
step1_start_info:
    print_field "start_info: nr_pages=", SI_nr_pages(%ebp)
    print_field " shared_info=", SI_shared_info(%ebp)
    print_field " flags=", SI_flags(%ebp)
    call print_nl
    print_field "start_info: store_mfn=", SI_store_mfn(%ebp)
    print_field " store_evtchn=", SI_store_evtchn(%ebp)
    print_field " console_mfn=", SI_console_mfn(%ebp)
    print_field " console_evtchn=", SI_console_evtchn(%ebp)
    call print_nl
    print_field "start_info: pt_base=", SI_pt_base(%ebp)
    print_field " nr_pt_frames=", SI_nr_pt_frames(%ebp)
    print_field " mfn_list=", SI_mfn_list(%ebp)
    print_field " mod_start=", SI_mod_start(%ebp)
    print_field " mod_len=", SI_mod_len(%ebp)
    call print_nl
    print_lit "start_info: cmd_line=\""
    lea SI_cmd_line(%ebp), %eax
    mov $SI_CMD_LINE_SIZE, %edx
    call print_strn
    print_lit "\"\n"

/* Step 2: the domain builder wrote "xen-3.0-x86_32p" at the start of magic. */
step2_magic:
    lea SI_magic(%ebp), %eax
    mov $str_magic_want, %edx
    call str_prefix
    test %eax, %eax
    jz 1f
    check_ok magic
    jmp step3_hypercall_page
1:  check_fail magic, "magic does not begin with xen-3.0-x86_32p"

/* Step 3: xen_version(XENVER_version, NULL) through the stub that Xen wrote
 * into the hypercall page; Xen returns major << 16 | minor. */
step3_hypercall_page:
    mov $XENVER_version, %ebx
    xor %ecx, %ecx
    HYPERCALL __HYPERVISOR_xen_version
    mov %eax, ver_page
    test %eax, %eax
    js 1f                               /* -errno */
    shr $16, %eax                       /* major */
    cmp $3, %eax
    jb 1f
    check_ok hypercall_page
    jmp step4_direct_hypercall
1:  check_fail_val hypercall_page, ver_page, "xen_version returned"

/* Step 4: the same hypercall as a bare int $0x82 from ring 1; Xen must
 * answer it as it answered the stub. */
step4_direct_hypercall:
    mov $XENVER_version, %ebx
    xor %ecx, %ecx
direct_hypercall_site:
    HYPERCALL_DIRECT __HYPERVISOR_xen_version
    mov %eax, ver_direct
    cmp ver_page, %eax
    jne 1f
    check_ok direct_hypercall
    jmp step5_console_io
1:  check_fail_start direct_hypercall, "int $0x82 returned"
    mov ver_direct, %eax
    call print_hex
    print_field " but the hypercall page returned ", ver_page
    call print_nl

/* Step 5: the console_io write of step 1 returned 0. */
step5_console_io:
    cmpl $0, hello_rc
    check_cond e, console_io, hello_rc, "console_io write returned"

/* Step 6a: stub 63 of the page; Xen has no hypercall 63: -ENOSYS. */
step6_enosys:
    xor %ebx, %ebx
    xor %ecx, %ecx
    xor %edx, %edx
    HYPERCALL HYPERCALL_UNUSED_63
    mov %eax, enosys_rc
    cmp $-ENOSYS, %eax
    check_cond e, enosys, enosys_rc, "hypercall 63 returned"

/* Step 6b: console_io(write, 8, 0x1000): nothing is mapped there, so Xen's
 * copy from guest memory fails: -EFAULT. */
step6_efault:
    mov $CONSOLEIO_write, %ebx
    mov $8, %ecx
    mov $0x1000, %edx
    HYPERCALL __HYPERVISOR_console_io
    mov %eax, efault_rc
    cmp $-EFAULT, %eax
    check_cond e, efault, efault_rc, "console_io from an unmapped buffer returned"

/* Step 7: m2p[mfn_list[pfn]] == pfn for pfn 0..15 and for start_info's own
 * pfn (Xen keeps the read-only M2P at M2P_VIRT_START in step with the p2m
 * that the builder wrote), and the p2m is not the identity. */
step7_m2p:
    mov SI_mfn_list(%ebp), %esi         /* ESI = p2m: mfn_list[pfn], 4 B each */
    mov $M2P_VIRT_START, %edi           /* EDI = m2p: m2p[mfn], 4 B each */
    xor %ebx, %ebx                      /* EBX = pfn */
m2p_loop:
    call m2p_check_pfn
    jne m2p_bad
    inc %ebx
    cmp $P2M_CHECK_PFNS, %ebx
    jb m2p_loop
m2p_start_info:
    mov %ebp, %ebx
    sub $VIRT_BASE, %ebx
    shr $PAGE_SHIFT, %ebx               /* start_info's pfn */
    mov %ebx, start_info_pfn
    call m2p_check_pfn
    jne m2p_bad
    cmpl $0, m2p_nonidentity
    je m2p_identity
    check_ok m2p
    jmp step8_console_ring
m2p_identity:
    check_fail m2p, "the p2m is the identity for the pfns checked"
    jmp step8_console_ring
m2p_bad:
    check_fail_start m2p, "m2p[mfn_list[pfn]] != pfn for pfn"
    mov %ebx, %eax
    call print_hex
    print_field ": mfn=", m2p_mfn
    print_field " m2p[mfn]=", m2p_pfn
    call print_nl

/* Step 8: put a line in the console ring, publish it (barrier, then
 * out_prod), kick the console event channel; the backend consumes the bytes
 * and advances out_cons. Yield until it has. */
step8_console_ring:
    mov SI_console_mfn(%ebp), %eax
    mov M2P_VIRT_START(,%eax,4), %eax   /* console pfn = m2p[console_mfn] */
    mov %eax, console_pfn
    cmp SI_nr_pages(%ebp), %eax
    jae ring_bad_pfn
    shl $PAGE_SHIFT, %eax
    add $VIRT_BASE, %eax
    mov %eax, console_ring_va
    mov %eax, %edi                      /* EDI = struct xencons_interface */
    mov XENCONS_out_prod(%edi), %edx    /* EDX = our out_prod */
    mov $str_ring_msg, %esi
ring_copy:
    movzbl (%esi), %eax
    test %al, %al
    jz ring_publish
    mov %edx, %ecx
    and $(XENCONS_OUT_SIZE - 1), %ecx
    mov %al, XENCONS_out(%edi,%ecx)
    inc %edx
    inc %esi
    jmp ring_copy
ring_publish:
    lock addl $0, (%esp)                /* barrier: the bytes before the index */
    mov %edx, XENCONS_out_prod(%edi)
ring_notify:
    mov SI_console_evtchn(%ebp), %eax
    mov %eax, evtchn_send_arg           /* struct evtchn_send {u32 port} */
    mov $EVTCHNOP_send, %ebx
    mov $evtchn_send_arg, %ecx
    HYPERCALL __HYPERVISOR_event_channel_op
    mov %eax, ring_send_rc
ring_drain:
    mov console_ring_va, %edi           /* reload: EDI may be a hypercall argument */
    mov XENCONS_out_cons(%edi), %eax
    cmp XENCONS_out_prod(%edi), %eax
    je ring_drained
    cmpl $RING_YIELDS_MAX, ring_yields
    jae ring_drained
    incl ring_yields
    mov $SCHEDOP_yield, %ebx
    xor %ecx, %ecx
    HYPERCALL __HYPERVISOR_sched_op
    jmp ring_drain
ring_drained:
    cmpl $0, ring_send_rc
    jne ring_bad_send
    mov XENCONS_out_cons(%edi), %eax
    cmp XENCONS_out_prod(%edi), %eax
    jne ring_not_drained
    check_ok console_ring
    jmp step9_trap_table
ring_bad_pfn:
    check_fail_val console_ring, console_pfn, "console pfn = m2p[console_mfn] >= nr_pages:"
    jmp step9_trap_table
ring_bad_send:
    check_fail_val console_ring, ring_send_rc, "event channel send returned"
    jmp step9_trap_table
ring_not_drained:
    check_fail_start console_ring, "ring not drained after 1000 yields:"
    print_field "out_cons=", XENCONS_out_cons(%edi)
    print_field " out_prod=", XENCONS_out_prod(%edi)
    call print_nl

/* Step 9: register a handler for vector 3 (#BP), DPL 3 so that int3 is
 * allowed from any ring. Xen copies the table and returns 0. */
step9_trap_table:
    mov $trap_table, %ebx
    HYPERCALL __HYPERVISOR_set_trap_table
    mov %eax, trap_table_rc
    test %eax, %eax
    check_cond z, trap_table, trap_table_rc, "set_trap_table returned"

/* Step 10: int3. Xen takes the #BP and, ring 1 to ring 1, pushes EIP, CS,
 * EFLAGS right below our ESP and enters trap_int3, which returns with the
 * iret hypercall to int3_return with ESP as it was. */
step10_int3:
    cmpl $0, trap_table_rc
    jne int3_skipped                    /* with no handler Xen would kill us */
    mov $INT3_MAGIC, %ebx
    mov %esp, int3_esp_before
int3_site:
    int3
int3_return:
    incl int3_resumed
    mov %esp, int3_esp_after
    mov %ebx, int3_ebx_after
int3_verify:
    cmpl $1, int3_count
    jne int3_bad_count
    testl $INT3_BAD_EIP, int3_bad
    jnz int3_bad_eip
    testl $INT3_BAD_CS, int3_bad
    jnz int3_bad_cs
    testl $INT3_BAD_ESP, int3_bad
    jnz int3_bad_esp
    cmpl $1, int3_resumed
    jne int3_bad_resumed
    cmpl $INT3_MAGIC, int3_ebx_after
    jne int3_bad_ebx
    mov int3_esp_before, %eax
    cmp %eax, int3_esp_after
    jne int3_bad_esp_after
    check_ok int3
    jmp step11_finish
int3_skipped:
    check_fail int3, "skipped because set_trap_table failed"
    jmp step11_finish
int3_bad_count:
    int3_fail int3_count, "handler ran (times):"
int3_bad_eip:
    int3_fail int3_frame+BF_eip, "frame EIP is not int3_return:"
int3_bad_cs:
    int3_fail int3_frame+BF_cs, "frame CS is not 0xe019:"
int3_bad_esp:
    int3_fail int3_frame_va, "frame is not right below the ESP before int3 - it is at"
int3_bad_resumed:
    int3_fail int3_resumed, "execution resumed at int3_return (times):"
int3_bad_ebx:
    int3_fail int3_ebx_after, "EBX not preserved:"
int3_bad_esp_after:
    int3_fail int3_esp_after, "ESP after iret is not the ESP before int3:"

/* Step 11: the RESULT line, then SCHEDOP_shutdown(SHUTDOWN_poweroff). */
step11_finish:
    jmp finish
    .size main, . - main

/* m2p_check_pfn: EBX = pfn, ESI = p2m, EDI = m2p. Sets ZF if
 * m2p[mfn_list[pfn]] == pfn; counts mfn != pfn in m2p_nonidentity.
 * Clobbers EAX, EDX. */
    .type m2p_check_pfn, @function
m2p_check_pfn:
    mov (%esi,%ebx,4), %eax             /* mfn = mfn_list[pfn] */
    mov %eax, m2p_mfn
    cmp %eax, %ebx
    je 1f
    incl m2p_nonidentity
1:  mov (%edi,%eax,4), %edx             /* m2p[mfn] */
    mov %edx, m2p_pfn
    cmp %edx, %ebx
    ret
    .size m2p_check_pfn, . - m2p_check_pfn

/*
 * trap_int3: the #BP handler named in trap_table. Frame at ESP (from Xen):
 * EIP, CS (saved upcall mask in bits 16-23), EFLAGS. It copies the frame to
 * int3_frame, checks EIP, CS and where the frame is, then jumps to the iret
 * stub of the hypercall page ("push %eax; mov $23,%eax; int $0x82"); Xen pops
 * EAX, EIP, CS, EFLAGS. Touches only EAX (restored before the iret).
 */
    .balign 16
    .type trap_int3, @function
trap_int3:
    push %eax                           /* the frame is now at 4(%esp) */
    incl int3_count
    lea 4(%esp), %eax
    mov %eax, int3_frame_va
    .irp i, 0, 1, 2
    mov 4+\i*4(%esp), %eax
    mov %eax, int3_frame+\i*4
    .endr
trap_int3_check_eip:
    cmpl $int3_return, 4+BF_eip(%esp)
    je trap_int3_check_cs
    orl $INT3_BAD_EIP, int3_bad
trap_int3_check_cs:
    movzwl 4+BF_cs(%esp), %eax
    cmp $FLAT_KERNEL_CS, %eax
    je trap_int3_check_esp
    orl $INT3_BAD_CS, int3_bad
trap_int3_check_esp:
    lea 4+BF_SIZE(%esp), %eax           /* the ESP that the frame was pushed below */
    cmp int3_esp_before, %eax
    je trap_int3_iret
    orl $INT3_BAD_ESP, int3_bad
trap_int3_iret:
    pop %eax
    jmp hypercall_page + __HYPERVISOR_iret * 32
    .size trap_int3, . - trap_int3

/* ---- read-only data ----------------------------------------------------------- */
    .section .rodata, "a", @progbits
str_hello_prefix:   .asciz "hello-pv32: magic="
str_magic_want:     .asciz "xen-3.0-x86_32p"
str_ring_msg:       .asciz "hello from the console ring\n"

/* ---- data --------------------------------------------------------------------- */
    .data
    .balign 16
/* set_trap_table argument: struct trap_info[], ended by an all-zero entry */
trap_table:
    .byte 3                             /* vector: #BP */
    .byte 3                             /* flags: DPL 3 */
    .word FLAT_KERNEL_CS                /* cs */
    .long trap_int3                     /* address */
    .long 0, 0                          /* terminator */

evtchn_send_arg:    .long 0             /* struct evtchn_send {u32 port} */
start_info_va:      .long 0             /* ESI at entry */
boot_esp:           .long 0             /* ESP at entry (Xen's bootstrap stack) */
start_info_pfn:     .long 0
hello_rc:           .long -1            /* console_io result for the hello line */
ver_page:           .long 0             /* xen_version via the hypercall page */
ver_direct:         .long 0             /* xen_version via int $0x82 */
enosys_rc:          .long 0
efault_rc:          .long 0
m2p_mfn:            .long 0             /* last mfn_list[pfn] checked */
m2p_pfn:            .long 0             /* last m2p[mfn] read */
m2p_nonidentity:    .long 0             /* pfns checked with mfn != pfn */
console_pfn:        .long 0
console_ring_va:    .long 0
ring_send_rc:       .long -1
ring_yields:        .long 0
trap_table_rc:      .long -1
int3_esp_before:    .long 0
int3_esp_after:     .long 0
int3_ebx_after:     .long 0
int3_count:         .long 0             /* times trap_int3 ran */
int3_bad:           .long 0             /* INT3_BAD_* bits */
int3_resumed:       .long 0             /* times int3_return ran */
int3_frame_va:      .long 0             /* ESP at handler entry */
int3_frame:         .fill 3, 4, 0       /* copy of the bounce frame */

/* ---- bss ---------------------------------------------------------------------- */
    .bss
    .balign 16
hello_line:         .skip 128
stack:              .skip 16384         /* our stack; ESP starts at stack_top */
stack_top:
