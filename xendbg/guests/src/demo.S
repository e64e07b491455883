/*
 * demo.S - xendbg's demo guest (x86_64 PV): it keeps every panel of the
 * debugger busy, forever. What `xendbg` with no KERNEL opens.
 *
 * Set-up, once:
 *   - maps shared_info over a page of its .bss (update_va_mapping) and
 *     registers its event and failsafe callbacks (callback_op);
 *   - binds event channels: VIRQ_TIMER, an IPI to itself, and a port
 *     allocated unbound for itself (sends on it go nowhere: Xen drops a
 *     notification on an unbound port);
 *   - builds a page table: takes the domain's last frame, fills it through a
 *     window as an L1 mapping its own data page read-only, maps the window
 *     read-only again and pins it (MMUEXT_PIN_L1_TABLE);
 *   - asks for a periodic timer (VCPUOP_set_periodic_timer).
 *
 * Then bursts, forever. Each burst prints a line, masks its events
 * (evtchn_upcall_mask), sends the IPI (it stays pending) and on the unbound
 * port, unmasks and makes a hypercall (Xen delivers the IPI on the way back),
 * issues a multicall of five entries (xen_version, send the IPI, rewrite an
 * entry of its L1 with mmu_update, every fourth burst unpin or re-pin the L1
 * (else flush the TLB), and a send to a port that was never allocated, which
 * fails with -EINVAL), sets a single-shot
 * timer a little ahead of the pvclock's system time (set_timer_op), and
 * idles with SCHEDOP_block until an event wakes it. Where Xen refuses a timer
 * (a hypervisor without them), it yields instead of blocking, so that it
 * never blocks with nothing to wake it.
 *
 * The event callback scans the 2-level bitmaps, clears and counts each
 * pending port, and returns with the iret hypercall. Entry state (Xen):
 * ring 3 in guest kernel mode, RSI = start_info, events masked. Registers in
 * main: R15 = start_info, RBX = the burst number.
 */
#include "xen-pv64.inc"

#define VCPUOP_set_periodic_timer 6
#define PERIOD_NS               10000000    /* the periodic timer: 10 ms */
#define ONESHOT_NS              3000000     /* the single-shot timer: 3 ms ahead */
#define COUNTED_PORTS           64
#define BAD_PORT                4095        /* valid for the ABI, never allocated */
#define MC_ENTRY                64          /* struct multicall_entry: op, result, args[6] */
#define MC_ENTRIES              5
#define L1_ENTRIES_USED         8           /* the L1 entries the bursts rewrite */
#define PTE_RW                  (_PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY)
#define PTE_RO                  (_PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED)
#define VCPU_time               0x20        /* struct vcpu_time_info in vcpu_info */
#define VT_tsc_timestamp        8
#define VT_system_time          16
#define VT_mul                  24
#define VT_shift                28

/* ---- Xen ELF notes ------------------------------------------------------------ */
    LAB_NOTES xendbg-demo

    HYPERCALL_PAGE_DEFINE
    LAB_LIB_DEFINE

/* evtchn CMD, ARG: event_channel_op(CMD, &ARG); RAX = rc. */
.macro evtchn cmd, arg
    push %rdi
    push %rsi
    mov $\cmd, %edi
    lea \arg(%rip), %rsi
    HYPERCALL __HYPERVISOR_event_channel_op
    pop %rsi
    pop %rdi
.endm

/* print_count "TEXT", SRC: TEXT then the 64-bit SRC in decimal. */
.macro print_count text, src
    print_lit "\text"
    push %rdi
    mov \src, %rdi
    call print_udec
    pop %rdi
.endm

/* ---- entry -------------------------------------------------------------------- */
    LAB_START

    .text
    .type main, @function
main:
    mov start_info_va(%rip), %r15
    print_lit "demo: xendbg's demo guest: event channels, page tables, multicalls, timers\n"
    call map_shared_info
    call register_callbacks
    call bind_ports
    call build_page_table
    call start_periodic_timer
    print_count "demo: ports timer=", timer_port(%rip)
    print_count " ipi=", ipi_port(%rip)
    print_count " unbound=", unbound_port(%rip)
    print_lit "; page table at mfn "
    push %rdi
    mov pt_mfn(%rip), %rdi
    call print_hex
    pop %rdi
    print_lit "; periodic timer "
    mov periodic_rc(%rip), %rdi
    call print_value
    call print_nl
    movb $0, shinfo_page+VCPU_upcall_mask(%rip)     /* events on */
    xor %ebx, %ebx

burst:
    inc %rbx
    print_count "demo: burst ", %rbx
    print_count ": upcalls ", upcalls(%rip)
    mov timer_port(%rip), %rcx
    mov seen(,%rcx,8), %rcx
    print_count ", timer events ", %rcx
    mov ipi_port(%rip), %rcx
    mov seen(,%rcx,8), %rcx
    print_count ", ipi events ", %rcx
    call print_nl
    call toggle_mask_and_send
    call issue_multicall
    call set_single_shot
    call idle
    jmp burst
    .size main, . - main

/* ---- set-up ------------------------------------------------------------------- */

/* map_shared_info: shared_info (its machine address is in start_info) over
 * shinfo_page, read-write. Without it nothing else works: crash. */
    .type map_shared_info, @function
map_shared_info:
    MAP_SHARED_INFO %r15, PTE_RW
    test %rax, %rax
    jnz fatal
    ret
    .size map_shared_info, . - map_shared_info

/* register_callbacks: the event callback and the failsafe callback. */
    .type register_callbacks, @function
register_callbacks:
    REGISTER_CALLBACK CALLBACKTYPE_event, evtchn_upcall
    test %rax, %rax
    jnz fatal
    REGISTER_CALLBACK CALLBACKTYPE_failsafe, demo_failsafe
    ret
    .size register_callbacks, . - register_callbacks

/* bind_ports: VIRQ_TIMER on vCPU 0, an IPI, and an unbound port for itself. */
    .type bind_ports, @function
bind_ports:
    movl $VIRQ_TIMER, virq_arg(%rip)
    movl $0, virq_arg+4(%rip)
    evtchn EVTCHNOP_bind_virq, virq_arg
    test %rax, %rax
    jnz fatal
    mov virq_arg+8(%rip), %eax
    mov %rax, timer_port(%rip)
    movl $0, ipi_arg(%rip)
    evtchn EVTCHNOP_bind_ipi, ipi_arg
    test %rax, %rax
    jnz fatal
    mov ipi_arg+4(%rip), %eax
    mov %rax, ipi_port(%rip)
    mov %eax, send_ipi_arg(%rip)
    movw $DOMID_SELF, unbound_arg(%rip)
    movw $DOMID_SELF, unbound_arg+2(%rip)
    evtchn EVTCHNOP_alloc_unbound, unbound_arg
    test %rax, %rax
    jnz fatal
    mov unbound_arg+4(%rip), %eax
    mov %rax, unbound_port(%rip)
    mov %eax, send_unbound_arg(%rip)
    ret
    .size bind_ports, . - bind_ports

/* build_page_table: the domain's last frame becomes an L1 whose first
 * entries map demo_data read-only; pinned. The frame is reached through
 * pt_window (update_va_mapping), written, then mapped read-only: Xen pins
 * only a table that nobody can write. */
    .type build_page_table, @function
build_page_table:
    mov SI_nr_pages(%r15), %rax
    dec %rax                            /* the last pfn: above the start-of-day region */
    mov SI_mfn_list(%r15), %rcx
    mov (%rcx,%rax,8), %rax
    mov %rax, pt_mfn(%rip)
    lea demo_data(%rip), %rax           /* demo_data's mfn: its pfn through the p2m */
    movabs $VIRT_BASE, %rcx
    sub %rcx, %rax
    shr $PAGE_SHIFT, %rax
    mov SI_mfn_list(%r15), %rcx
    mov (%rcx,%rax,8), %rax
    shl $PAGE_SHIFT, %rax
    or $PTE_RO, %rax
    mov %rax, data_pte(%rip)
    mov pt_mfn(%rip), %rsi              /* the window onto the frame, writable */
    shl $PAGE_SHIFT, %rsi
    or $PTE_RW, %rsi
    lea pt_window(%rip), %rdi
    mov $UVMF_INVLPG, %edx
    HYPERCALL __HYPERVISOR_update_va_mapping
    test %rax, %rax
    jnz fatal
    push %rdi
    lea pt_window(%rip), %rdi           /* zero it, then the entries */
    xor %eax, %eax
    mov $512, %ecx
    rep stosq
    pop %rdi
    mov data_pte(%rip), %rax
    xor %ecx, %ecx
1:  mov %rax, pt_window(,%rcx,8)
    inc %ecx
    cmp $L1_ENTRIES_USED, %ecx
    jb 1b
    mov pt_mfn(%rip), %rsi              /* the window read-only again */
    shl $PAGE_SHIFT, %rsi
    or $PTE_RO, %rsi
    lea pt_window(%rip), %rdi
    mov $UVMF_INVLPG, %edx
    HYPERCALL __HYPERVISOR_update_va_mapping
    test %rax, %rax
    jnz fatal
    movl $MMUEXT_PIN_L1_TABLE, pin_op(%rip)
    mov pt_mfn(%rip), %rax
    mov %rax, pin_op+MMUEXT_arg1(%rip)
    movl $MMUEXT_UNPIN_TABLE, unpin_op(%rip)
    mov %rax, unpin_op+MMUEXT_arg1(%rip)
    movl $MMUEXT_TLB_FLUSH_LOCAL, flush_op(%rip)
    lea pin_op(%rip), %rdi
    mov $1, %esi
    xor %edx, %edx
    mov $DOMID_SELF, %r10d
    HYPERCALL __HYPERVISOR_mmuext_op
    mov %rax, pin_rc(%rip)
    ret
    .size build_page_table, . - build_page_table

/* start_periodic_timer: VCPUOP_set_periodic_timer(vCPU 0, PERIOD_NS). */
    .type start_periodic_timer, @function
start_periodic_timer:
    movq $PERIOD_NS, period_arg(%rip)
    mov $VCPUOP_set_periodic_timer, %edi
    xor %esi, %esi
    lea period_arg(%rip), %rdx
    HYPERCALL __HYPERVISOR_vcpu_op
    mov %rax, periodic_rc(%rip)
    ret
    .size start_periodic_timer, . - start_periodic_timer

/* ---- a burst ------------------------------------------------------------------ */

/* toggle_mask_and_send: with events masked a send only marks the IPI
 * pending; once unmasked, the next hypercall brings the upcall. */
    .type toggle_mask_and_send, @function
toggle_mask_and_send:
    movb $1, shinfo_page+VCPU_upcall_mask(%rip)
    evtchn EVTCHNOP_send, send_ipi_arg
    evtchn EVTCHNOP_send, send_unbound_arg
    movb $0, shinfo_page+VCPU_upcall_mask(%rip)
    mov $XENVER_version, %edi
    xor %esi, %esi
    HYPERCALL __HYPERVISOR_xen_version
    ret
    .size toggle_mask_and_send, . - toggle_mask_and_send

/* issue_multicall: five entries; mmu_update rewrites entry (burst % 8) of
 * the L1, alternately mapping demo_data and clearing it. */
    .type issue_multicall, @function
issue_multicall:
    lea mc_list(%rip), %rdi
    xor %eax, %eax                      /* clear the batch */
    mov $(MC_ENTRIES * MC_ENTRY / 8), %ecx
    push %rdi
    rep stosq
    pop %rdi
    /* [0] xen_version(XENVER_version, NULL) */
    movq $__HYPERVISOR_xen_version, 0*MC_ENTRY(%rdi)
    /* [1] event_channel_op(EVTCHNOP_send, &send_ipi_arg) */
    movq $__HYPERVISOR_event_channel_op, 1*MC_ENTRY(%rdi)
    movq $EVTCHNOP_send, 1*MC_ENTRY+16(%rdi)
    lea send_ipi_arg(%rip), %rax
    mov %rax, 1*MC_ENTRY+24(%rdi)
    /* [2] mmu_update(&mmu_req, 1, NULL, DOMID_SELF) */
    mov %rbx, %rax
    and $(L1_ENTRIES_USED - 1), %eax
    shl $3, %rax
    mov pt_mfn(%rip), %rcx
    shl $PAGE_SHIFT, %rcx
    add %rcx, %rax                      /* ptr: the entry's machine address | MMU_NORMAL_PT_UPDATE */
    mov %rax, mmu_req(%rip)
    xor %eax, %eax
    test $1, %bl
    jz 1f
    mov data_pte(%rip), %rax
1:  mov %rax, mmu_req+8(%rip)
    movq $__HYPERVISOR_mmu_update, 2*MC_ENTRY(%rdi)
    lea mmu_req(%rip), %rax
    mov %rax, 2*MC_ENTRY+16(%rdi)
    movq $1, 2*MC_ENTRY+24(%rdi)
    movq $DOMID_SELF, 2*MC_ENTRY+40(%rdi)
    /* [3] mmuext_op(op, 1, NULL, DOMID_SELF): every 4th burst unpins or re-pins
     * the L1 (Xen re-validates it on a pin), the others flush the TLB */
    movq $__HYPERVISOR_mmuext_op, 3*MC_ENTRY(%rdi)
    lea flush_op(%rip), %rax
    test $3, %bl
    jnz 2f
    lea pin_op(%rip), %rax
    test $4, %bl
    jz 2f
    lea unpin_op(%rip), %rax
2:  mov %rax, 3*MC_ENTRY+16(%rdi)
    movq $1, 3*MC_ENTRY+24(%rdi)
    movq $DOMID_SELF, 3*MC_ENTRY+40(%rdi)
    /* [4] event_channel_op(EVTCHNOP_send, &{BAD_PORT}): -EINVAL */
    movq $__HYPERVISOR_event_channel_op, 4*MC_ENTRY(%rdi)
    movq $EVTCHNOP_send, 4*MC_ENTRY+16(%rdi)
    lea send_bad_arg(%rip), %rax
    mov %rax, 4*MC_ENTRY+24(%rdi)
    mov $MC_ENTRIES, %esi
    HYPERCALL __HYPERVISOR_multicall
    ret
    .size issue_multicall, . - issue_multicall

/* system_time: RAX = the pvclock's time in ns (vcpu_time_info of vCPU 0):
 * system_time + ((tsc - tsc_timestamp) << shift) * mul >> 32. Clobbers RAX. */
    .type system_time, @function
system_time:
    push %rcx
    push %rdx
    push %rsi
    lea shinfo_page+VCPU_time(%rip), %rsi
    rdtsc
    shl $32, %rdx
    or %rdx, %rax
    sub VT_tsc_timestamp(%rsi), %rax
    movsbl VT_shift(%rsi), %ecx
    test %ecx, %ecx
    js 1f
    shl %cl, %rax
    jmp 2f
1:  neg %ecx
    shr %cl, %rax
2:  mov VT_mul(%rsi), %ecx
    mul %rcx
    shrd $32, %rdx, %rax
    add VT_system_time(%rsi), %rax
    pop %rsi
    pop %rdx
    pop %rcx
    ret
    .size system_time, . - system_time

/* set_single_shot: set_timer_op(now + ONESHOT_NS). */
    .type set_single_shot, @function
set_single_shot:
    call system_time
    add $ONESHOT_NS, %rax
    push %rdi
    mov %rax, %rdi
    HYPERCALL __HYPERVISOR_set_timer_op
    pop %rdi
    mov %rax, oneshot_rc(%rip)
    ret
    .size set_single_shot, . - set_single_shot

/* idle: SCHEDOP_block when a timer will wake us, else SCHEDOP_yield. */
    .type idle, @function
idle:
    push %rdi
    push %rsi
    mov $SCHEDOP_yield, %edi
    cmpq $0, oneshot_rc(%rip)
    je 1f
    cmpq $0, periodic_rc(%rip)
    jne 2f
1:  mov $SCHEDOP_block, %edi
2:  xor %esi, %esi
    HYPERCALL __HYPERVISOR_sched_op
    pop %rsi
    pop %rdi
    ret
    .size idle, . - idle

/* fatal: a set-up step failed: say which (RAX = its rc) and crash the domain. */
    .type fatal, @function
fatal:
    mov %rax, fatal_rc(%rip)
    print_lit "demo: a set-up hypercall failed: "
    mov fatal_rc(%rip), %rdi
    call print_value
    print_lit " (called from "
    mov (%rsp), %rdi
    call print_hex
    print_lit ")\n"
    movl $SHUTDOWN_crash, sched_shutdown_arg(%rip)
    jmp finish_shutdown
    .size fatal, . - fatal

/* ---- callbacks ---------------------------------------------------------------- */

/*
 * evtchn_upcall: Xen enters it with events masked and the bounce frame at
 * RSP (RCX, R11, RIP, CS, RFLAGS, RSP, SS). Clear evtchn_upcall_pending,
 * take evtchn_pending_sel, and for each selected word each pending and
 * unmasked port: clear its bit (lock btr) and count it in seen[]. Return with
 * the iret hypercall, which restores the event mask from RFLAGS.IF.
 */
    .balign 16
    .type evtchn_upcall, @function
evtchn_upcall:
    push %rax
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %r8
    push %r9
    incq upcalls(%rip)
    lea shinfo_page(%rip), %rsi
    movb $0, VCPU_upcall_pending(%rsi)
    xor %eax, %eax
    xchg %rax, VCPU_pending_sel(%rsi)
upcall_word:
    test %rax, %rax
    jz upcall_done
    bsf %rax, %rcx
    btr %rcx, %rax
    mov SHINFO_evtchn_pending(%rsi,%rcx,8), %rdx
    mov SHINFO_evtchn_mask(%rsi,%rcx,8), %rdi
    not %rdi
    and %rdi, %rdx
upcall_port:
    test %rdx, %rdx
    jz upcall_word
    bsf %rdx, %r8
    btr %r8, %rdx
    lock btr %r8, SHINFO_evtchn_pending(%rsi,%rcx,8)
    mov %rcx, %r9
    shl $EVTCHN_WORD_SHIFT, %r9
    add %r8, %r9                        /* R9 = the port */
    cmp $COUNTED_PORTS, %r9
    jae upcall_port
    lea seen(%rip), %rdi
    incq (%rdi,%r9,8)
    jmp upcall_port
upcall_done:
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rax
    pop %rcx                            /* the interrupted RCX and R11 */
    pop %r11
    pushq $0                            /* iret flags: not VGCF_in_syscall */
    jmp hypercall_page + __HYPERVISOR_iret * 32
    .size evtchn_upcall, . - evtchn_upcall

/* demo_failsafe: Xen could not return with our segments: say so and crash. */
    .type demo_failsafe, @function
demo_failsafe:
    print_lit "demo: Xen entered the failsafe callback\n"
    movl $SHUTDOWN_crash, sched_shutdown_arg(%rip)
    jmp finish_shutdown
    .size demo_failsafe, . - demo_failsafe

/* ---- data --------------------------------------------------------------------- */
    .data
    .balign 8
start_info_va:          .quad 0
timer_port:             .quad 0
ipi_port:               .quad 0
unbound_port:           .quad 0
pt_mfn:                 .quad 0
data_pte:               .quad 0
pin_rc:                 .quad 0
periodic_rc:            .quad 0
oneshot_rc:             .quad 0
fatal_rc:               .quad 0
upcalls:                .quad 0
period_arg:             .quad 0         /* vcpu_set_periodic_timer {u64 period_ns} */
cb_arg:                 .quad 0, 0      /* callback_register {u16 type, u16 flags; u64 address} */
virq_arg:               .long 0, 0, 0   /* bind_virq {virq, vcpu; OUT port} */
ipi_arg:                .long 0, 0      /* bind_ipi {vcpu; OUT port} */
unbound_arg:            .long 0, 0      /* alloc_unbound {u16 dom, remote_dom; OUT port} */
send_ipi_arg:           .long 0         /* send {port} */
send_unbound_arg:       .long 0
send_bad_arg:           .long BAD_PORT
    .balign 8
mmu_req:                .quad 0, 0      /* mmu_update {ptr, val} */
pin_op:                 .fill MMUEXT_OP_SIZE, 1, 0
unpin_op:               .fill MMUEXT_OP_SIZE, 1, 0
flush_op:               .fill MMUEXT_OP_SIZE, 1, 0
mc_list:                .fill MC_ENTRIES * MC_ENTRY, 1, 0
seen:                   .fill COUNTED_PORTS, 8, 0   /* seen[port]: deliveries */
    .balign PAGE_SIZE
demo_data:              .ascii "xendbg demo data page"
                        .fill PAGE_SIZE - 21, 1, 0

/* ---- bss ---------------------------------------------------------------------- */
    .bss
    .balign PAGE_SIZE
shinfo_page:            .skip PAGE_SIZE /* shared_info is mapped here */
pt_window:              .skip PAGE_SIZE /* the window onto the L1 frame */
    .balign 16
stack:                  .skip 16384
stack_top:
