/*
 * time-pv64.S - lab guest: virtual time, pvclock, timers and blocking, x86_64 PV.
 *
 * The guest side of Xen's time (xen/arch/x86/time.c, common/sched/core.c,
 * common/domain.c: do_vcpu_op), as a PV kernel uses it:
 *
 *   - the pvclock: vcpu_info.time is a record (tsc_timestamp, system_time,
 *     tsc_to_system_mul, tsc_shift, flags) published under a version seqlock;
 *     the time now is system_time + ((rdtsc - tsc_timestamp) << shift) * mul
 *     >> 32. It must never go backwards, over many reads;
 *   - the wallclock in shared_info (wc_version, wc_sec, wc_nsec, wc_sec_hi):
 *     the wall time at system time 0;
 *   - VIRQ_TIMER bound to an event channel, delivered through the event
 *     callback: the 100 Hz periodic timer every PV vCPU starts with (counted
 *     over one virtual second), a faster one, and stopping it;
 *   - single-shot timers (VCPUOP_set_singleshot_timer): one in the future
 *     fires after its deadline; one in the past with VCPU_SSHOTTMR_future is
 *     refused with -ETIME, without the flag it fires at once; stopping one;
 *   - set_timer_op and SCHEDOP_block: the vCPU sleeps until the timer fires;
 *     SCHEDOP_poll with a timeout, and woken by its port;
 *   - the runstate (get_runstate_info, register_runstate_memory_area): the
 *     time it spent blocked is there;
 *   - vcpu_op's other answers to a domU, register_vcpu_info (moving the
 *     vcpu_info into a page of ours, once), the secondary time area, the
 *     watchdog.
 *
 * Each step prints "CHECK <name>: ok" or "CHECK <name>: FAIL ..."; then
 * "RESULT: PASS" or "RESULT: FAIL", and the guest powers itself off. Time is
 * read only with the pvclock (pvclock_now); waiting is burning instructions,
 * which is what makes virtual time pass.
 *
 * Entry state (Xen): ring 3 in guest kernel mode, RSI = start_info,
 * evtchn_upcall_mask = 1. Registers in main: R15 = start_info.
 */
#include "xen-pv64.inc"

/* ---- constants this guest needs (xen.h, vcpu.h, sched.h) ---------------- */
#define VCPU_time               0x20    /* struct vcpu_time_info in vcpu_info */
#define TIME_version            0x00    /* u32 */
#define TIME_tsc_timestamp      0x08    /* u64 */
#define TIME_system_time        0x10    /* u64, ns */
#define TIME_mul                0x18    /* u32 tsc_to_system_mul */
#define TIME_shift              0x1c    /* s8 tsc_shift */
#define TIME_flags              0x1d    /* u8 */
#define TIME_INFO_SIZE          32
#define PVCLOCK_TSC_STABLE      1
#define SHINFO_wc_version       0xc00
#define SHINFO_wc_sec           0xc04
#define SHINFO_wc_nsec          0xc08
#define SHINFO_wc_sec_hi        0xc0c
#define VCPU_INFO_SIZE          64
#define T_VCPUOP_initialise     0
#define T_VCPUOP_up             1
#define T_VCPUOP_is_up          3
#define T_VCPUOP_get_runstate_info 4
#define T_VCPUOP_register_runstate_memory_area 5
#define T_VCPUOP_set_periodic_timer 6
#define T_VCPUOP_stop_periodic_timer 7
#define T_VCPUOP_set_singleshot_timer 8
#define T_VCPUOP_stop_singleshot_timer 9
#define T_VCPUOP_register_vcpu_info 10
#define T_VCPUOP_send_nmi       11
#define T_VCPUOP_get_physid     12
#define T_VCPUOP_register_vcpu_time_memory_area 13
#define T_SSHOTTMR_future       1
#define T_SCHEDOP_poll          3
#define T_SCHEDOP_watchdog      6
#define T_ETIME                 62
#define T_EEXIST                17
#define RS_state                0       /* struct vcpu_runstate_info, 48 bytes */
#define RS_entry                8
#define RS_time                 16
#define RUNSTATE_SIZE           48
#define RUNSTATE_running        0
#define RUNSTATE_blocked        2
#define POLL_SIZE               24      /* sched_poll {ports @0; nr_ports @8; timeout @16} */
#define MSEC                    1000000
#define SEC                     1000000000
#define Y2020                   1577836800
#define Y2100                   4102444800
#define VINFO_OFFSET            0x40    /* where in vinfo_page register_vcpu_info puts it */
#define PTE_SHINFO      (_PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY)

/* ---- Xen ELF notes ------------------------------------------------------------ */
    LAB_NOTES

    HYPERCALL_PAGE_DEFINE
    LAB_LIB_DEFINE

/* ---- helpers for this guest ----------------------------------------------------- */

/* check_between NAME, SRC, LO, HI, "WHAT": "ok" if LO <= SRC <= HI (signed
 * 64-bit), else "FAIL WHAT <src>, want LO..HI". SRC, LO, HI: anything `mov X,
 * %rax` accepts but RSP-relative. Clobbers RAX. */
.macro check_between name, src, lo, hi, what:vararg
    mov \src, %rax
    mov %rax, lab_got(%rip)
    mov \lo, %rax
    mov %rax, rng_lo(%rip)
    mov \hi, %rax
    mov %rax, rng_hi(%rip)
    mov lab_got(%rip), %rax
    cmp rng_lo(%rip), %rax
    jl .Lcb_bad\@
    cmp rng_hi(%rip), %rax
    jg .Lcb_bad\@
    check_ok \name
    jmp .Lcb_done\@
.Lcb_bad\@:
    check_fail_start \name, \what
    call print_got_range
.Lcb_done\@:
.endm

/* vcpu_op CMD, VCPU, ARG: HYPERVISOR_vcpu_op(CMD, VCPU, ARG). RAX = rc. */
.macro vcpu_op cmd, vcpu, arg
    mov \cmd, %edi
    mov \vcpu, %esi
    mov \arg, %rdx
    HYPERCALL __HYPERVISOR_vcpu_op
.endm

/* now_to REG: REG = pvclock_now(). */
.macro now_to reg
    call pvclock_now
    mov %rax, \reg
.endm

/* ---- entry ------------------------------------------------------------------- */
    LAB_START

    .text
    .type main, @function
main:
    mov start_info_va(%rip), %r15
    print_lit "time-pv64: virtual time, pvclock, timers and blocking\n"

/* Step 1: map shared_info over a page of our .bss (update_va_mapping). The
 * vCPU's vcpu_info is vcpu_info[0] at its start. */
step1_shared_info:
    MAP_SHARED_INFO %r15, PTE_SHINFO
    CHECK_SHARED_INFO_MAPPED
    lea shinfo_page(%rip), %rax
    mov %rax, vcpu_info_ptr(%rip)

/* Step 2: the time record Xen published before we started: an even (complete)
 * version that is not 0, the TSC_STABLE flag, a usable scale. */
step2_record:
    mov vcpu_info_ptr(%rip), %rbx
    mov VCPU_time+TIME_version(%rbx), %eax
    mov %rax, boot_version(%rip)
    and $1, %eax
    check_eq time_version_even, %rax, $0, "vcpu_time_info.version is odd (an update in progress):"
    check_between time_published, boot_version(%rip), $2, $0x7fffffff, "vcpu_time_info.version is"
    movzbl VCPU_time+TIME_flags(%rbx), %eax
    and $PVCLOCK_TSC_STABLE, %eax
    check_eq time_tsc_stable, %rax, $PVCLOCK_TSC_STABLE, "vcpu_time_info.flags & TSC_STABLE is"
    mov VCPU_time+TIME_mul(%rbx), %eax
    check_between time_mul, %rax, $0x80000000, $0xffffffff, "tsc_to_system_mul (a fraction in [0.5, 1)) is"
    movsbq VCPU_time+TIME_shift(%rbx), %rax
    check_between time_shift, %rax, $-31, $31, "tsc_shift is"

/* Step 3: many reads of the clock never go backwards, and time does pass. */
step3_monotonic:
    now_to %r12                         /* the first read */
    mov %r12, %r13                      /* the previous read */
    movq $0, backwards(%rip)
    mov $5000, %r14d
1:  call pvclock_now
    cmp %r13, %rax
    jae 2f
    incq backwards(%rip)
2:  mov %rax, %r13
    dec %r14d
    jnz 1b
    check_eq pvclock_monotonic, backwards(%rip), $0, "reads that went backwards:"
    sub %r12, %r13
    check_between pvclock_advances, %r13, $1, $(100 * MSEC), "ns between the first and the 5000th read:"

/* Step 4: the wallclock: a complete version, a date in this century. */
step4_wallclock:
    mov shinfo_page+SHINFO_wc_version(%rip), %eax
    mov %rax, wc_version(%rip)
    and $1, %eax
    check_eq wallclock_version_even, %rax, $0, "wc_version is odd:"
    check_between wallclock_published, wc_version(%rip), $2, $0x7fffffff, "wc_version is"
    mov shinfo_page+SHINFO_wc_sec(%rip), %eax
    mov shinfo_page+SHINFO_wc_sec_hi(%rip), %edx
    shl $32, %rdx
    or %rdx, %rax
    mov %rax, wc_sec(%rip)
    check_between wallclock_date, wc_sec(%rip), $Y2020, $Y2100, "wc_sec (seconds since 1970) is"
    mov shinfo_page+SHINFO_wc_nsec(%rip), %eax
    check_between wallclock_nsec, %rax, $0, $(SEC - 1), "wc_nsec is"
    print_lit "wallclock at boot: "
    mov wc_sec(%rip), %rdi
    call print_value
    print_lit " s since 1970\n"

/* Step 5: events: callbacks, VIRQ_TIMER bound on vCPU 0, events unmasked. */
step5_events:
    REGISTER_CALLBACK CALLBACKTYPE_event, evtchn_upcall
    check_eq callback_event, %rax, $0, "callback_op(register, event) returned"
    REGISTER_CALLBACK CALLBACKTYPE_failsafe, evtchn_failsafe
    BIND_VIRQ VIRQ_TIMER
    check_eq bind_virq_timer, %rax, $0, "EVTCHNOP_bind_virq(VIRQ_TIMER) returned"
    mov virq_arg+8(%rip), %eax
    mov %eax, timer_port(%rip)
    call reset_timer_port
    mov vcpu_info_ptr(%rip), %rbx
    movb $0, VCPU_upcall_mask(%rbx)

/* Step 6: the periodic timer every PV vCPU starts with ticks at 100 Hz: about
 * 100 VIRQ_TIMER events in one virtual second. Xen also takes a new
 * calibration stamp every second: the record's version moves on. */
step6_periodic_default:
    mov vcpu_info_ptr(%rip), %rbx
    mov VCPU_time+TIME_version(%rbx), %eax
    mov %rax, version_before(%rip)
    movq $0, timer_events(%rip)
    mov $SEC, %edi
    call spin_ns
    check_between periodic_default_100hz, timer_events(%rip), $99, $101, "VIRQ_TIMER events in one second with the default timer:"
    mov vcpu_info_ptr(%rip), %rbx
    mov VCPU_time+TIME_version(%rbx), %eax
    cmp version_before(%rip), %rax
    check_cond a, pvclock_republished, %rax, "the record was not republished in one second; version"

/* Step 7: VCPUOP_set_periodic_timer: below 1 ms is -EINVAL; 5 ms gives about
 * 20 events in 100 ms; stop_periodic_timer stops them. */
step7_periodic:
    movq $(MSEC / 2), period_arg(%rip)
    lea period_arg(%rip), %rdx
    vcpu_op $T_VCPUOP_set_periodic_timer, $0, %rdx
    check_eq periodic_too_short, %rax, $-EINVAL, "set_periodic_timer(0.5 ms) returned"
    movq $(5 * MSEC), period_arg(%rip)
    lea period_arg(%rip), %rdx
    vcpu_op $T_VCPUOP_set_periodic_timer, $0, %rdx
    check_eq periodic_set, %rax, $0, "set_periodic_timer(5 ms) returned"
    movq $0, timer_events(%rip)
    mov $(100 * MSEC), %edi
    call spin_ns
    check_between periodic_200hz, timer_events(%rip), $19, $21, "VIRQ_TIMER events in 100 ms at 5 ms:"
    vcpu_op $T_VCPUOP_stop_periodic_timer, $0, $0
    check_eq periodic_stop, %rax, $0, "stop_periodic_timer returned"
    movq $0, timer_events(%rip)
    mov $(50 * MSEC), %edi
    call spin_ns
    check_eq periodic_stopped, timer_events(%rip), $0, "VIRQ_TIMER events in 50 ms after stopping:"

/* Step 8: a single-shot timer 1 ms ahead: its event arrives, at or after the
 * deadline (the handler reads the clock), and not much later. */
step8_singleshot:
    now_to %r12
    add $MSEC, %r12
    mov %r12, deadline(%rip)
    mov %r12, %rdi
    mov $T_SSHOTTMR_future, %esi
    call set_singleshot
    check_eq singleshot_set, %rax, $0, "set_singleshot_timer(now + 1 ms, future) returned"
    movq $0, timer_events(%rip)
    mov $(100 * MSEC), %edi
    call wait_event
    check_eq singleshot_fires, timer_events(%rip), $1, "VIRQ_TIMER events within 100 ms:"
    mov last_timer_ns(%rip), %rax
    sub deadline(%rip), %rax
    check_between singleshot_after_deadline, %rax, $0, $(MSEC / 10), "ns from the deadline to the handler (want 0 to 100 us):"
    movq $0, timer_events(%rip)
    mov $(5 * MSEC), %edi
    call spin_ns
    check_eq singleshot_once, timer_events(%rip), $0, "VIRQ_TIMER events after the single shot:"

/* Step 9: a deadline already past: with VCPU_SSHOTTMR_future, -ETIME and no
 * event; without the flag the timer fires at once, on the way back. */
step9_singleshot_past:
    now_to %rdi
    sub $MSEC, %rdi
    mov $T_SSHOTTMR_future, %esi
    movq $0, timer_events(%rip)
    call set_singleshot
    check_eq singleshot_past_etime, %rax, $-T_ETIME, "set_singleshot_timer(now - 1 ms, future) returned"
    mov $(2 * MSEC), %edi
    call spin_ns
    check_eq singleshot_past_no_event, timer_events(%rip), $0, "VIRQ_TIMER events after the -ETIME:"
    now_to %rdi
    sub $MSEC, %rdi
    xor %esi, %esi
    call set_singleshot
    mov timer_events(%rip), %rbx        /* read before anything else runs */
    check_eq singleshot_past_set, %rax, $0, "set_singleshot_timer(now - 1 ms) returned"
    check_eq singleshot_past_fires, %rbx, $1, "VIRQ_TIMER events on return from that call:"

/* Step 10: stop_singleshot_timer: an armed timer that is stopped never fires;
 * the single-shot timer belongs to the calling vCPU only (vCPU 1: -ENOENT). */
step10_singleshot_stop:
    now_to %rdi
    add $MSEC, %rdi
    xor %esi, %esi
    call set_singleshot
    vcpu_op $T_VCPUOP_stop_singleshot_timer, $0, $0
    check_eq singleshot_stop, %rax, $0, "stop_singleshot_timer returned"
    movq $0, timer_events(%rip)
    mov $(3 * MSEC), %edi
    call spin_ns
    check_eq singleshot_stopped, timer_events(%rip), $0, "VIRQ_TIMER events after stopping:"
    lea sst_arg(%rip), %rdx
    vcpu_op $T_VCPUOP_set_singleshot_timer, $1, %rdx
    check_eq singleshot_other_vcpu, %rax, $-ENOENT, "set_singleshot_timer on vCPU 1 returned"

/* Step 11: set_timer_op(now + 2 ms), then SCHEDOP_block: the vCPU sleeps until
 * the timer fires; the event is delivered on the way back from the block. */
step11_block:
    now_to %r12
    mov %r12, block_start(%rip)
    add $(2 * MSEC), %r12
    mov %r12, deadline(%rip)
    mov %r12, %rdi
    HYPERCALL __HYPERVISOR_set_timer_op
    check_eq set_timer_op, %rax, $0, "set_timer_op(now + 2 ms) returned"
    movq $0, timer_events(%rip)
    mov $SCHEDOP_block, %edi
    xor %esi, %esi
    HYPERCALL __HYPERVISOR_sched_op
    mov %rax, block_rc(%rip)
    now_to %r13
    check_eq block_returns, block_rc(%rip), $0, "SCHEDOP_block returned"
    check_eq block_timer_event, timer_events(%rip), $1, "VIRQ_TIMER events when the block returned:"
    mov %r13, %rax
    sub deadline(%rip), %rax
    check_between block_until_deadline, %rax, $0, $(MSEC / 10), "ns from the deadline to the return from SCHEDOP_block:"
    mov %r13, %rax
    sub block_start(%rip), %rax
    mov %rax, blocked_ns(%rip)

/* Step 12: SCHEDOP_poll with events masked. With no timer armed it returns at
 * its timeout; with a single-shot timer armed it returns when the timer's
 * port becomes pending (masked ports are polled too). */
step12_poll:
    mov vcpu_info_ptr(%rip), %rbx
    movb $1, VCPU_upcall_mask(%rbx)
    call reset_timer_port
    lea timer_port(%rip), %rax
    mov %rax, poll_arg(%rip)
    movl $1, poll_arg+8(%rip)
    now_to %r12
    add $MSEC, %r12
    mov %r12, poll_arg+16(%rip)
    mov $T_SCHEDOP_poll, %edi
    lea poll_arg(%rip), %rsi
    HYPERCALL __HYPERVISOR_sched_op
    mov %rax, block_rc(%rip)
    now_to %r13
    check_eq poll_timeout_rc, block_rc(%rip), $0, "SCHEDOP_poll(timer port, now + 1 ms) returned"
    mov %r13, %rax
    sub %r12, %rax
    check_between poll_timeout, %rax, $0, $(MSEC / 10), "ns from the poll's timeout to its return:"
    call timer_port_pending
    check_eq poll_timeout_not_pending, %rax, $0, "the timer port after a timed-out poll is pending:"
    now_to %rdi
    add $MSEC, %rdi
    mov %rdi, deadline(%rip)
    xor %esi, %esi
    call set_singleshot
    now_to %rax
    add $(500 * MSEC), %rax
    mov %rax, poll_arg+16(%rip)
    mov $T_SCHEDOP_poll, %edi
    lea poll_arg(%rip), %rsi
    HYPERCALL __HYPERVISOR_sched_op
    mov %rax, block_rc(%rip)
    now_to %r13
    check_eq poll_port_rc, block_rc(%rip), $0, "SCHEDOP_poll(timer port) with a timer armed returned"
    call timer_port_pending
    check_eq poll_port_pending, %rax, $1, "the timer port after the poll is pending:"
    mov %r13, %rax
    sub deadline(%rip), %rax
    check_between poll_wakes_on_port, %rax, $0, $(MSEC / 10), "ns from the timer's deadline to the poll's return:"
    call reset_timer_port
    mov vcpu_info_ptr(%rip), %rbx
    movb $0, VCPU_upcall_mask(%rbx)

/* Step 13: the runstate. A registered area gets a copy at once (running);
 * get_runstate_info charges the current state up to now, so its four times
 * add up to the system time; the vCPU has been blocked for the 2 ms of the
 * block and the 2 ms of the polls. */
step13_runstate:
    movl $-1, runstate_area+RS_state(%rip)
    lea runstate_area(%rip), %rax
    mov %rax, handle_arg(%rip)
    lea handle_arg(%rip), %rdx
    vcpu_op $T_VCPUOP_register_runstate_memory_area, $0, %rdx
    check_eq runstate_register, %rax, $0, "register_runstate_memory_area returned"
    mov runstate_area+RS_state(%rip), %eax
    check_eq runstate_area_running, %rax, $RUNSTATE_running, "the area's state is"
    now_to %r12
    lea runstate_info(%rip), %rdx
    vcpu_op $T_VCPUOP_get_runstate_info, $0, %rdx
    check_eq runstate_info_rc, %rax, $0, "get_runstate_info returned"
    now_to %r13
    mov runstate_info+RS_state(%rip), %eax
    check_eq runstate_info_running, %rax, $RUNSTATE_running, "its state is"
    mov runstate_info+RS_time+RUNSTATE_blocked*8(%rip), %rax
    check_between runstate_blocked_time, %rax, $(39 * MSEC / 10), $(6 * MSEC), "ns spent blocked:"
    mov runstate_info+RS_time(%rip), %rax
    add runstate_info+RS_time+8(%rip), %rax
    add runstate_info+RS_time+16(%rip), %rax
    add runstate_info+RS_time+24(%rip), %rax
    check_between runstate_adds_up, %rax, %r12, %r13, "the four times add up to"
    lea runstate_info(%rip), %rdx
    vcpu_op $T_VCPUOP_get_runstate_info, $7, %rdx
    check_eq runstate_no_vcpu, %rax, $-ENOENT, "get_runstate_info(vCPU 7) returned"

/* Step 14: the rest of vcpu_op, as Xen answers a domU with one vCPU. */
step14_vcpu_op:
    vcpu_op $T_VCPUOP_is_up, $0, $0
    check_eq is_up, %rax, $1, "is_up(0) returned"
    vcpu_op $T_VCPUOP_is_up, $1, $0
    check_eq is_up_no_vcpu, %rax, $-ENOENT, "is_up(1) returned"
    vcpu_op $T_VCPUOP_up, $0, $0
    check_eq up_running, %rax, $0, "up(0) of the running vCPU returned"
    lea _start(%rip), %rdx              /* readable: the context is copied in before the check */
    vcpu_op $T_VCPUOP_initialise, $0, %rdx
    check_eq initialise_again, %rax, $-T_EEXIST, "initialise(0) returned"
    vcpu_op $T_VCPUOP_initialise, $0, $0
    check_eq initialise_fault, %rax, $-EFAULT, "initialise(0, NULL) returned"
    vcpu_op $T_VCPUOP_get_physid, $0, $0
    check_eq get_physid, %rax, $-EINVAL, "get_physid(0) returned"
    vcpu_op $T_VCPUOP_send_nmi, $0, $1
    check_eq send_nmi_arg, %rax, $-EINVAL, "send_nmi(0, non-NULL) returned"
    vcpu_op $T_VCPUOP_send_nmi, $0, $0
    check_eq send_nmi_dropped, %rax, $0, "send_nmi(0) without an NMI handler returned"
    vcpu_op $99, $0, $0
    check_eq vcpu_op_unknown, %rax, $-ENOSYS, "vcpu_op(99) returned"
    lea time_area(%rip), %rax
    mov %rax, handle_arg(%rip)
    lea handle_arg(%rip), %rdx
    vcpu_op $T_VCPUOP_register_vcpu_time_memory_area, $0, %rdx
    check_eq time_area_register, %rax, $0, "register_vcpu_time_memory_area returned"
    mov vcpu_info_ptr(%rip), %rbx
    mov VCPU_time+TIME_tsc_timestamp(%rbx), %rdx
    check_eq time_area_copy, time_area+TIME_tsc_timestamp(%rip), %rdx, "the area's tsc_timestamp is"
    mov time_area+TIME_version(%rip), %eax
    and $1, %eax
    check_eq time_area_version_even, %rax, $0, "the area's version is odd:"

/* Step 15: SCHEDOP_watchdog: id 0 takes a free timer and returns its id, a
 * timeout of 0 frees it, an id beyond the domain's two is -EINVAL. */
step15_watchdog:
    movl $0, wd_arg(%rip)
    movl $1000, wd_arg+4(%rip)
    mov $T_SCHEDOP_watchdog, %edi
    lea wd_arg(%rip), %rsi
    HYPERCALL __HYPERVISOR_sched_op
    check_eq watchdog_arm, %rax, $1, "watchdog(0, 1000 s) returned"
    movl $1, wd_arg(%rip)
    movl $0, wd_arg+4(%rip)
    mov $T_SCHEDOP_watchdog, %edi
    lea wd_arg(%rip), %rsi
    HYPERCALL __HYPERVISOR_sched_op
    check_eq watchdog_disarm, %rax, $0, "watchdog(1, 0) returned"
    movl $3, wd_arg(%rip)
    mov $T_SCHEDOP_watchdog, %edi
    lea wd_arg(%rip), %rsi
    HYPERCALL __HYPERVISOR_sched_op
    check_eq watchdog_bad_id, %rax, $-EINVAL, "watchdog(3, 0) returned"

/* Step 16: register_vcpu_info moves our vcpu_info into a page of ours: Xen
 * copies it (the time record comes along) and marks every event pending.
 * A second registration is refused. Events and the clock then work there. */
step16_vcpu_info:
    mov vcpu_info_ptr(%rip), %rbx
    movb $1, VCPU_upcall_mask(%rbx)
    mov VCPU_time+TIME_tsc_timestamp(%rbx), %rax
    mov %rax, old_stamp(%rip)
    lea vinfo_page(%rip), %rax
    movabs $VIRT_BASE, %rcx
    sub %rcx, %rax
    shr $PAGE_SHIFT, %rax               /* its pfn; the p2m gives the mfn */
    mov SI_mfn_list(%r15), %rcx
    mov (%rcx,%rax,8), %rax
    mov %rax, vinfo_arg(%rip)           /* {u64 mfn; u32 offset; u32 rsvd} */
    movl $VINFO_OFFSET, vinfo_arg+8(%rip)
    movl $0, vinfo_arg+12(%rip)
    lea vinfo_arg(%rip), %rdx
    vcpu_op $T_VCPUOP_register_vcpu_info, $0, %rdx
    check_eq register_vcpu_info, %rax, $0, "register_vcpu_info returned"
    lea vinfo_page+VINFO_OFFSET(%rip), %rbx
    mov VCPU_time+TIME_tsc_timestamp(%rbx), %rax
    check_eq vcpu_info_copied, %rax, old_stamp(%rip), "the moved record's tsc_timestamp is"
    movzbl VCPU_upcall_mask(%rbx), %eax
    check_eq vcpu_info_mask_copied, %rax, $1, "the moved evtchn_upcall_mask is"
    movzbl VCPU_upcall_pending(%rbx), %eax
    check_eq vcpu_info_pending, %rax, $1, "the moved evtchn_upcall_pending is"
    mov %rbx, vcpu_info_ptr(%rip)
    lea vinfo_arg(%rip), %rdx
    vcpu_op $T_VCPUOP_register_vcpu_info, $0, %rdx
    check_eq register_vcpu_info_once, %rax, $-EINVAL, "a second register_vcpu_info returned"
    movq $0, upcall_count(%rip)
    movb $0, VCPU_upcall_mask(%rbx)
    mov $XENVER_version, %edi           /* any hypercall: the pending upcall comes on return */
    xor %esi, %esi
    HYPERCALL __HYPERVISOR_xen_version
    check_eq vcpu_info_upcall, upcall_count(%rip), $1, "upcalls through the moved vcpu_info:"
    now_to %rdi
    add $MSEC, %rdi
    mov %rdi, deadline(%rip)
    xor %esi, %esi
    call set_singleshot
    movq $0, timer_events(%rip)
    mov $(100 * MSEC), %edi
    call wait_event
    check_eq vcpu_info_timer, timer_events(%rip), $1, "VIRQ_TIMER events through the moved vcpu_info:"
    mov last_timer_ns(%rip), %rax
    sub deadline(%rip), %rax
    check_between vcpu_info_clock, %rax, $0, $(MSEC / 10), "ns from the deadline to the handler, read from the moved record:"
    jmp finish

    NO_SHARED_INFO
    .size main, . - main

/* ---- routines ----------------------------------------------------------------- */

/* pvclock_now(): RAX = system time in ns, from the record in vcpu_info_ptr
 * with the version protocol; every other register is preserved. */
    .type pvclock_now, @function
pvclock_now:
    push %rcx
    push %rdx
    push %rsi
    push %r8
    mov vcpu_info_ptr(%rip), %rsi
    add $VCPU_time, %rsi
1:  mov TIME_version(%rsi), %r8d
    test $1, %r8d
    jnz 1b                              /* an update is in progress */
    lfence
    rdtsc
    shl $32, %rdx
    or %rdx, %rax
    sub TIME_tsc_timestamp(%rsi), %rax
    movsbl TIME_shift(%rsi), %ecx
    test %ecx, %ecx
    js 2f
    shl %cl, %rax
    jmp 3f
2:  neg %ecx
    shr %cl, %rax
3:  mov TIME_mul(%rsi), %edx
    mul %rdx                            /* RDX:RAX = delta * mul */
    shrd $32, %rdx, %rax
    add TIME_system_time(%rsi), %rax
    lfence
    cmp TIME_version(%rsi), %r8d
    jne 1b                              /* the record changed under us */
    pop %r8
    pop %rsi
    pop %rdx
    pop %rcx
    ret
    .size pvclock_now, . - pvclock_now

/* burn(): about 16000 instructions of register arithmetic: time passing. */
    .type burn, @function
burn:
    push %rax
    push %rcx
    mov $512, %ecx
1:  .rept 30
    add %rcx, %rax
    .endr
    dec %ecx
    jnz 1b
    pop %rcx
    pop %rax
    ret
    .size burn, . - burn

/* spin_ns(RDI = ns): burn until the clock has moved on by RDI ns. */
    .type spin_ns, @function
spin_ns:
    push %rdi
    call pvclock_now
    add %rax, %rdi
1:  call burn
    call pvclock_now
    cmp %rdi, %rax
    jb 1b
    pop %rdi
    ret
    .size spin_ns, . - spin_ns

/* wait_event(RDI = ns): burn until timer_events changes or RDI ns passed. */
    .type wait_event, @function
wait_event:
    push %rdi
    push %rsi
    mov timer_events(%rip), %rsi
    call pvclock_now
    add %rax, %rdi
1:  call burn
    cmp timer_events(%rip), %rsi
    jne 2f
    call pvclock_now
    cmp %rdi, %rax
    jb 1b
2:  pop %rsi
    pop %rdi
    ret
    .size wait_event, . - wait_event

/* set_singleshot(RDI = deadline ns, RSI = flags): VCPUOP_set_singleshot_timer
 * on vCPU 0. Returns RAX. */
    .type set_singleshot, @function
set_singleshot:
    push %rdx
    push %rdi
    push %rsi
    mov %rdi, sst_arg(%rip)
    mov %esi, sst_arg+8(%rip)
    movl $0, sst_arg+12(%rip)
    lea sst_arg(%rip), %rdx
    vcpu_op $T_VCPUOP_set_singleshot_timer, $0, %rdx
    pop %rsi
    pop %rdi
    pop %rdx
    ret
    .size set_singleshot, . - set_singleshot

/* timer_port_pending(): RAX = the timer port's pending bit. */
    .type timer_port_pending, @function
timer_port_pending:
    push %rcx
    mov timer_port(%rip), %ecx
    lea shinfo_page+SHINFO_evtchn_pending(%rip), %rax
    bt %rcx, (%rax)
    setc %al
    movzbl %al, %eax
    pop %rcx
    ret
    .size timer_port_pending, . - timer_port_pending

/* reset_timer_port(): forget a pending timer event: the port's pending bit,
 * the vCPU's selector and evtchn_upcall_pending. */
    .type reset_timer_port, @function
reset_timer_port:
    push %rcx
    push %rax
    mov timer_port(%rip), %ecx
    lock btr %rcx, shinfo_page+SHINFO_evtchn_pending(%rip)
    mov vcpu_info_ptr(%rip), %rax
    movq $0, VCPU_pending_sel(%rax)
    movb $0, VCPU_upcall_pending(%rax)
    pop %rax
    pop %rcx
    ret
    .size reset_timer_port, . - reset_timer_port

/* print_got_range(): print_value(lab_got) ", want " lo ".." hi "\n". */
    .type print_got_range, @function
print_got_range:
    push %rdi
    mov lab_got(%rip), %rdi
    call print_value
    print_lit ", want "
    mov rng_lo(%rip), %rdi
    call print_value
    print_lit ".."
    mov rng_hi(%rip), %rdi
    call print_value
    call print_nl
    pop %rdi
    ret
    .size print_got_range, . - print_got_range

/*
 * evtchn_upcall: the event callback. Xen enters it with events masked and a
 * frame of RCX, R11, RIP, CS, RFLAGS, RSP, SS at RSP. It does the 2-level
 * scan through the current vcpu_info (vcpu_info_ptr): clear
 * evtchn_upcall_pending, take evtchn_pending_sel, and for each selected word
 * every pending & ~masked port, cleared with lock btr. A VIRQ_TIMER event is
 * counted in timer_events and the clock read into last_timer_ns. It returns
 * with the iret hypercall. Every register of the interrupted code is kept.
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
    incq upcall_count(%rip)
    mov vcpu_info_ptr(%rip), %rdi
    lea shinfo_page(%rip), %rsi
    movb $0, VCPU_upcall_pending(%rdi)
    xor %eax, %eax
    xchg %rax, VCPU_pending_sel(%rdi)   /* RAX = the words to look at */
upcall_next_word:
    test %rax, %rax
    jz upcall_done
    bsf %rax, %rcx                      /* RCX = word */
    btr %rcx, %rax
    mov SHINFO_evtchn_pending(%rsi,%rcx,8), %rdx
    mov SHINFO_evtchn_mask(%rsi,%rcx,8), %r8
    not %r8
    and %r8, %rdx                       /* RDX = pending and not masked */
upcall_next_bit:
    test %rdx, %rdx
    jz upcall_next_word
    bsf %rdx, %r8                       /* R8 = bit */
    btr %r8, %rdx
    lock btr %r8, SHINFO_evtchn_pending(%rsi,%rcx,8)
    mov %rcx, %r9
    shl $EVTCHN_WORD_SHIFT, %r9
    add %r8, %r9                        /* R9 = port */
    cmp timer_port(%rip), %r9d
    jne 1f
    incq timer_events(%rip)
    push %rax
    call pvclock_now
    mov %rax, last_timer_ns(%rip)
    pop %rax
    jmp upcall_next_bit
1:  incq other_events(%rip)
    jmp upcall_next_bit
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

/* evtchn_failsafe: this guest never changes its segments. */
    LAB_FAILSAFE_DEFINE

/* ---- data --------------------------------------------------------------------- */
    .data
    .balign 8
start_info_va:          .quad 0
shinfo_rc:              .quad -1
vcpu_info_ptr:          .quad 0         /* where our vcpu_info is (moves in step 16) */
timer_port:             .long 0, 0
boot_version:           .quad 0
version_before:         .quad 0
backwards:              .quad 0
wc_version:             .quad 0
wc_sec:                 .quad 0
rng_lo:                 .quad 0         /* the range of the last check_between */
rng_hi:                 .quad 0
upcall_count:           .quad 0
timer_events:           .quad 0         /* VIRQ_TIMER events seen by the handler */
other_events:           .quad 0
last_timer_ns:          .quad 0         /* the clock when the handler saw the last one */
deadline:               .quad 0
block_start:            .quad 0
block_rc:               .quad 0
blocked_ns:             .quad 0
old_stamp:              .quad 0
/* hypercall argument structures */
cb_arg:                 .quad 0, 0      /* callback_register {u16 type, u16 flags; u64 address} */
virq_arg:               .long 0, 0, 0   /* bind_virq {virq, vcpu; OUT port} */
    .balign 8
period_arg:             .quad 0         /* vcpu_set_periodic_timer {u64 period_ns} */
sst_arg:                .quad 0, 0      /* vcpu_set_singleshot_timer {u64 timeout; u32 flags} */
poll_arg:               .quad 0, 0, 0   /* sched_poll */
handle_arg:             .quad 0         /* {union {ptr; u64} addr} */
vinfo_arg:              .quad 0, 0      /* vcpu_register_vcpu_info {u64 mfn; u32 offset, rsvd} */
wd_arg:                 .long 0, 0      /* sched_watchdog {u32 id; u32 timeout} */
runstate_area:          .fill RUNSTATE_SIZE, 1, 0
runstate_info:          .fill RUNSTATE_SIZE, 1, 0
time_area:              .fill TIME_INFO_SIZE, 1, 0

/* ---- bss ---------------------------------------------------------------------- */
    .bss
    .balign PAGE_SIZE
shinfo_page:            .skip PAGE_SIZE /* shared_info is mapped here (step 1) */
vinfo_page:             .skip PAGE_SIZE /* register_vcpu_info moves vcpu_info here */
    .balign 16
stack:                  .skip 16384
stack_top:
