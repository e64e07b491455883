/*
 * time-pv32.S - lab guest: virtual time, pvclock, timers and blocking, x86_32 PAE PV.
 *
 * The 32-bit twin of time-pv64.S (read that one's header for what each step
 * shows); the checks have the same names. What differs is the ABI:
 *
 *   - the kernel runs in ring 1 and makes hypercalls with int $0x82, arguments
 *     in EBX, ECX, EDX, ESI, EDI; set_timer_op takes its 64-bit deadline as
 *     two registers, the low half (EBX) first;
 *   - 64-bit quantities (times, the TSC) live in EDX:EAX, and the pvclock's
 *     (delta * mul) >> 32 is done as two 32x32 multiplications;
 *   - the compat structures: vcpu_set_singleshot_timer is 12 bytes,
 *     sched_poll 16 (timeout at 8), vcpu_runstate_info 44 (packed: the u64s
 *     at 4 and 12), event words of 32 bits, wc_sec_hi inside arch_shared_info;
 *   - register_vcpu_time_memory_area does not exist for a 32-bit guest
 *     (-ENOSYS).
 *
 * Entry state (Xen): ring 1, ESI = start_info, evtchn_upcall_mask = 1.
 * Registers in main: EBP = start_info.
 */
#include "xen-pv32.inc"

/* ---- constants this guest needs (xen.h, vcpu.h, sched.h) ---------------- */
#define VCPU_time               0x20
#define TIME_version            0x00
#define TIME_tsc_timestamp      0x08
#define TIME_system_time        0x10
#define TIME_mul                0x18
#define TIME_shift              0x1c
#define TIME_flags              0x1d
#define PVCLOCK_TSC_STABLE      1
#define SHINFO_wc_version       0x900
#define SHINFO_wc_sec           0x904
#define SHINFO_wc_nsec          0x908
#define SHINFO_wc_sec_hi        0x924   /* arch_shared_info (0x90c) + 0x18 */
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
#define RS_state                0       /* compat vcpu_runstate_info, 44 bytes */
#define RS_entry                4
#define RS_time                 12
#define RUNSTATE_SIZE           44
#define RUNSTATE_running        0
#define RUNSTATE_blocked        2
#define MSEC                    1000000
#define SEC                     1000000000
#define Y2020                   1577836800
#define VINFO_OFFSET            0x40
#define PTE_SHINFO      (_PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY)

/* ---- Xen ELF notes ------------------------------------------------------------ */
    LAB_NOTES

    HYPERCALL_PAGE_DEFINE
    LAB_LIB_DEFINE

/* ---- helpers for this guest ----------------------------------------------------- */

/* check_between NAME, SRC, LO, HI, "WHAT": "ok" if LO <= SRC <= HI (signed
 * 32-bit), else "FAIL WHAT <src>, want LO..HI". Clobbers EAX. */
.macro check_between name, src, lo, hi, what:vararg
    mov \src, %eax
    mov %eax, lab_got
    mov \lo, %eax
    mov %eax, rng_lo
    mov \hi, %eax
    mov %eax, rng_hi
    mov lab_got, %eax
    cmp rng_lo, %eax
    jl .Lcb_bad\@
    cmp rng_hi, %eax
    jg .Lcb_bad\@
    check_ok \name
    jmp .Lcb_done\@
.Lcb_bad\@:
    check_fail_start \name, \what
    call print_got_range
.Lcb_done\@:
.endm

/* vcpu_op CMD, VCPU, ARG: HYPERVISOR_vcpu_op(CMD, VCPU, ARG). EAX = rc. */
.macro vcpu_op cmd, vcpu, arg
    mov \cmd, %ebx
    mov \vcpu, %ecx
    mov \arg, %edx
    HYPERCALL __HYPERVISOR_vcpu_op
.endm

/* now_to LABEL: the 64-bit LABEL = pvclock_now(). */
.macro now_to label
    call pvclock_now
    mov %eax, \label
    mov %edx, \label+4
.endm

/* since LABEL: EAX = now - LABEL (64-bit), clamped to a signed 32-bit value. */
.macro since label
    call pvclock_now
    sub \label, %eax
    sbb \label+4, %edx
    call sat32
.endm

/* ---- entry ------------------------------------------------------------------- */
    LAB_START

    .text
    .type main, @function
main:
    mov start_info_va, %ebp
    print_lit "time-pv32: virtual time, pvclock, timers and blocking\n"

/* Step 1: map shared_info (update_va_mapping(va, pte_lo, pte_hi, flags)). */
step1_shared_info:
    MAP_SHARED_INFO %ebp, PTE_SHINFO
    CHECK_SHARED_INFO_MAPPED
    movl $shinfo_page, vcpu_info_ptr

/* Step 2: the time record Xen published before we started. */
step2_record:
    mov vcpu_info_ptr, %ebx
    mov VCPU_time+TIME_version(%ebx), %eax
    mov %eax, boot_version
    and $1, %eax
    check_eq time_version_even, %eax, $0, "vcpu_time_info.version is odd (an update in progress):"
    check_between time_published, boot_version, $2, $0x7fffffff, "vcpu_time_info.version is"
    movzbl VCPU_time+TIME_flags(%ebx), %eax
    and $PVCLOCK_TSC_STABLE, %eax
    check_eq time_tsc_stable, %eax, $PVCLOCK_TSC_STABLE, "vcpu_time_info.flags & TSC_STABLE is"
    mov VCPU_time+TIME_mul(%ebx), %eax
    shr $31, %eax
    check_eq time_mul, %eax, $1, "bit 31 of tsc_to_system_mul (a fraction in [0.5, 1)) is"
    movsbl VCPU_time+TIME_shift(%ebx), %eax
    check_between time_shift, %eax, $-31, $31, "tsc_shift is"

/* Step 3: many reads of the clock never go backwards, and time does pass. */
step3_monotonic:
    now_to t_first
    mov t_first, %esi                   /* EDI:ESI = the previous read */
    mov t_first+4, %edi
    movl $0, backwards
    movl $5000, loops
1:  call pvclock_now
    cmp %edi, %edx
    ja 2f
    jb 3f
    cmp %esi, %eax
    jae 2f
3:  incl backwards
2:  mov %eax, %esi
    mov %edx, %edi
    decl loops
    jnz 1b
    check_eq pvclock_monotonic, backwards, $0, "reads that went backwards:"
    sub t_first, %esi
    sbb t_first+4, %edi
    mov %esi, %eax
    mov %edi, %edx
    call sat32
    check_between pvclock_advances, %eax, $1, $(100 * MSEC), "ns between the first and the 5000th read:"

/* Step 4: the wallclock. */
step4_wallclock:
    mov shinfo_page+SHINFO_wc_version, %eax
    mov %eax, wc_version
    and $1, %eax
    check_eq wallclock_version_even, %eax, $0, "wc_version is odd:"
    check_between wallclock_published, wc_version, $2, $0x7fffffff, "wc_version is"
    mov shinfo_page+SHINFO_wc_sec, %eax
    mov %eax, wc_sec
    sub $Y2020, %eax                    /* seconds since 2020: below 2**31 until 2088 */
    check_between wallclock_date, %eax, $0, $0x7fffffff, "wc_sec - 2020-01-01 (seconds) is"
    check_eq wallclock_sec_hi, shinfo_page+SHINFO_wc_sec_hi, $0, "wc_sec_hi is"
    mov shinfo_page+SHINFO_wc_nsec, %eax
    check_between wallclock_nsec, %eax, $0, $(SEC - 1), "wc_nsec is"
    print_lit "wallclock at boot: "
    mov wc_sec, %eax
    call print_hex
    print_lit " s since 1970\n"

/* Step 5: events: callbacks, VIRQ_TIMER bound on vCPU 0, events unmasked. */
step5_events:
    SET_CALLBACKS evtchn_upcall, evtchn_failsafe
    check_eq callback_event, %eax, $0, "set_callbacks returned"
    BIND_VIRQ VIRQ_TIMER
    check_eq bind_virq_timer, %eax, $0, "EVTCHNOP_bind_virq(VIRQ_TIMER) returned"
    mov virq_arg+8, %eax
    mov %eax, timer_port
    call reset_timer_port
    mov vcpu_info_ptr, %ebx
    movb $0, VCPU_upcall_mask(%ebx)

/* Step 6: the default 100 Hz periodic timer over one virtual second; the
 * calibration republishes the record. */
step6_periodic_default:
    mov vcpu_info_ptr, %ebx
    mov VCPU_time+TIME_version(%ebx), %eax
    mov %eax, version_before
    movl $0, timer_events
    mov $SEC, %eax
    call spin_ns
    check_between periodic_default_100hz, timer_events, $99, $101, "VIRQ_TIMER events in one second with the default timer:"
    mov vcpu_info_ptr, %ebx
    mov VCPU_time+TIME_version(%ebx), %eax
    cmp version_before, %eax
    check_cond a, pvclock_republished, %eax, "the record was not republished in one second; version"

/* Step 7: set_periodic_timer / stop_periodic_timer. */
step7_periodic:
    movl $(MSEC / 2), period_arg
    movl $0, period_arg+4
    vcpu_op $T_VCPUOP_set_periodic_timer, $0, $period_arg
    check_eq periodic_too_short, %eax, $-EINVAL, "set_periodic_timer(0.5 ms) returned"
    movl $(5 * MSEC), period_arg
    vcpu_op $T_VCPUOP_set_periodic_timer, $0, $period_arg
    check_eq periodic_set, %eax, $0, "set_periodic_timer(5 ms) returned"
    movl $0, timer_events
    mov $(100 * MSEC), %eax
    call spin_ns
    check_between periodic_200hz, timer_events, $19, $21, "VIRQ_TIMER events in 100 ms at 5 ms:"
    vcpu_op $T_VCPUOP_stop_periodic_timer, $0, $0
    check_eq periodic_stop, %eax, $0, "stop_periodic_timer returned"
    movl $0, timer_events
    mov $(50 * MSEC), %eax
    call spin_ns
    check_eq periodic_stopped, timer_events, $0, "VIRQ_TIMER events in 50 ms after stopping:"

/* Step 8: a single-shot timer 1 ms ahead. */
step8_singleshot:
    mov $MSEC, %eax
    call deadline_in
    mov $T_SSHOTTMR_future, %eax
    call set_singleshot
    check_eq singleshot_set, %eax, $0, "set_singleshot_timer(now + 1 ms, future) returned"
    movl $0, timer_events
    mov $(100 * MSEC), %eax
    call wait_event
    check_eq singleshot_fires, timer_events, $1, "VIRQ_TIMER events within 100 ms:"
    mov last_timer_ns, %eax
    mov last_timer_ns+4, %edx
    sub deadline, %eax
    sbb deadline+4, %edx
    call sat32
    check_between singleshot_after_deadline, %eax, $0, $(MSEC / 10), "ns from the deadline to the handler (want 0 to 100 us):"
    movl $0, timer_events
    mov $(5 * MSEC), %eax
    call spin_ns
    check_eq singleshot_once, timer_events, $0, "VIRQ_TIMER events after the single shot:"

/* Step 9: deadlines already past: -ETIME with the flag, at once without. */
step9_singleshot_past:
    mov $-MSEC, %eax
    call deadline_in
    movl $0, timer_events
    mov $T_SSHOTTMR_future, %eax
    call set_singleshot
    check_eq singleshot_past_etime, %eax, $-T_ETIME, "set_singleshot_timer(now - 1 ms, future) returned"
    mov $(2 * MSEC), %eax
    call spin_ns
    check_eq singleshot_past_no_event, timer_events, $0, "VIRQ_TIMER events after the -ETIME:"
    mov $-MSEC, %eax
    call deadline_in
    xor %eax, %eax
    call set_singleshot
    mov timer_events, %ebx              /* read before anything else runs */
    check_eq singleshot_past_set, %eax, $0, "set_singleshot_timer(now - 1 ms) returned"
    check_eq singleshot_past_fires, %ebx, $1, "VIRQ_TIMER events on return from that call:"

/* Step 10: stop_singleshot_timer; the timer is the calling vCPU's. */
step10_singleshot_stop:
    mov $MSEC, %eax
    call deadline_in
    xor %eax, %eax
    call set_singleshot
    vcpu_op $T_VCPUOP_stop_singleshot_timer, $0, $0
    check_eq singleshot_stop, %eax, $0, "stop_singleshot_timer returned"
    movl $0, timer_events
    mov $(3 * MSEC), %eax
    call spin_ns
    check_eq singleshot_stopped, timer_events, $0, "VIRQ_TIMER events after stopping:"
    vcpu_op $T_VCPUOP_set_singleshot_timer, $1, $sst_arg
    check_eq singleshot_other_vcpu, %eax, $-ENOENT, "set_singleshot_timer on vCPU 1 returned"

/* Step 11: set_timer_op(now + 2 ms) as (lo, hi), then SCHEDOP_block. */
step11_block:
    now_to block_start
    mov $(2 * MSEC), %eax
    call deadline_in
    mov deadline, %ebx
    mov deadline+4, %ecx
    HYPERCALL __HYPERVISOR_set_timer_op
    check_eq set_timer_op, %eax, $0, "set_timer_op(now + 2 ms) returned"
    movl $0, timer_events
    mov $SCHEDOP_block, %ebx
    xor %ecx, %ecx
    HYPERCALL __HYPERVISOR_sched_op
    mov %eax, block_rc
    since deadline
    mov %eax, late
    check_eq block_returns, block_rc, $0, "SCHEDOP_block returned"
    check_eq block_timer_event, timer_events, $1, "VIRQ_TIMER events when the block returned:"
    check_between block_until_deadline, late, $0, $(MSEC / 10), "ns from the deadline to the return from SCHEDOP_block:"

/* Step 12: SCHEDOP_poll with events masked: timeout, then woken by the port. */
step12_poll:
    mov vcpu_info_ptr, %ebx
    movb $1, VCPU_upcall_mask(%ebx)
    call reset_timer_port
    movl $timer_port, poll_arg          /* {ports; nr_ports; u64 timeout} */
    movl $1, poll_arg+4
    mov $MSEC, %eax
    call deadline_in
    mov deadline, %eax
    mov %eax, poll_arg+8
    mov deadline+4, %eax
    mov %eax, poll_arg+12
    mov $T_SCHEDOP_poll, %ebx
    mov $poll_arg, %ecx
    HYPERCALL __HYPERVISOR_sched_op
    mov %eax, block_rc
    since deadline
    mov %eax, late
    check_eq poll_timeout_rc, block_rc, $0, "SCHEDOP_poll(timer port, now + 1 ms) returned"
    check_between poll_timeout, late, $0, $(MSEC / 10), "ns from the poll's timeout to its return:"
    call timer_port_pending
    check_eq poll_timeout_not_pending, %eax, $0, "the timer port after a timed-out poll is pending:"
    mov $(500 * MSEC), %eax
    call deadline_in
    mov deadline, %eax
    mov %eax, poll_arg+8
    mov deadline+4, %eax
    mov %eax, poll_arg+12
    mov $MSEC, %eax
    call deadline_in
    xor %eax, %eax
    call set_singleshot
    mov $T_SCHEDOP_poll, %ebx
    mov $poll_arg, %ecx
    HYPERCALL __HYPERVISOR_sched_op
    mov %eax, block_rc
    since deadline
    mov %eax, late
    check_eq poll_port_rc, block_rc, $0, "SCHEDOP_poll(timer port) with a timer armed returned"
    call timer_port_pending
    check_eq poll_port_pending, %eax, $1, "the timer port after the poll is pending:"
    check_between poll_wakes_on_port, late, $0, $(MSEC / 10), "ns from the timer's deadline to the poll's return:"
    call reset_timer_port
    mov vcpu_info_ptr, %ebx
    movb $0, VCPU_upcall_mask(%ebx)

/* Step 13: the runstate (the compat layout). */
step13_runstate:
    movl $-1, runstate_area+RS_state
    movl $runstate_area, handle_arg
    movl $0, handle_arg+4
    vcpu_op $T_VCPUOP_register_runstate_memory_area, $0, $handle_arg
    check_eq runstate_register, %eax, $0, "register_runstate_memory_area returned"
    check_eq runstate_area_running, runstate_area+RS_state, $RUNSTATE_running, "the area's state is"
    now_to t_first
    vcpu_op $T_VCPUOP_get_runstate_info, $0, $runstate_info
    check_eq runstate_info_rc, %eax, $0, "get_runstate_info returned"
    since t_first
    mov %eax, window                    /* the call happened within [t_first, t_first + window] */
    check_eq runstate_info_running, runstate_info+RS_state, $RUNSTATE_running, "its state is"
    mov runstate_info+RS_time+RUNSTATE_blocked*8, %eax
    mov runstate_info+RS_time+RUNSTATE_blocked*8+4, %edx
    call sat32
    check_between runstate_blocked_time, %eax, $(39 * MSEC / 10), $(6 * MSEC), "ns spent blocked:"
    xor %eax, %eax                      /* EDX:EAX = the sum of the four times */
    xor %edx, %edx
    .irp i, 0, 1, 2, 3
    add runstate_info+RS_time+\i*8, %eax
    adc runstate_info+RS_time+\i*8+4, %edx
    .endr
    sub t_first, %eax
    sbb t_first+4, %edx
    call sat32
    check_between runstate_adds_up, %eax, $0, window, "the four times add up to the time of the call plus"
    vcpu_op $T_VCPUOP_get_runstate_info, $7, $runstate_info
    check_eq runstate_no_vcpu, %eax, $-ENOENT, "get_runstate_info(vCPU 7) returned"

/* Step 14: the rest of vcpu_op, as Xen answers a 32-bit domU. */
step14_vcpu_op:
    vcpu_op $T_VCPUOP_is_up, $0, $0
    check_eq is_up, %eax, $1, "is_up(0) returned"
    vcpu_op $T_VCPUOP_is_up, $1, $0
    check_eq is_up_no_vcpu, %eax, $-ENOENT, "is_up(1) returned"
    vcpu_op $T_VCPUOP_up, $0, $0
    check_eq up_running, %eax, $0, "up(0) of the running vCPU returned"
    vcpu_op $T_VCPUOP_initialise, $0, $_start
    check_eq initialise_again, %eax, $-T_EEXIST, "initialise(0) returned"
    vcpu_op $T_VCPUOP_initialise, $0, $0
    check_eq initialise_fault, %eax, $-EFAULT, "initialise(0, NULL) returned"
    vcpu_op $T_VCPUOP_get_physid, $0, $0
    check_eq get_physid, %eax, $-EINVAL, "get_physid(0) returned"
    vcpu_op $T_VCPUOP_send_nmi, $0, $1
    check_eq send_nmi_arg, %eax, $-EINVAL, "send_nmi(0, non-NULL) returned"
    vcpu_op $T_VCPUOP_send_nmi, $0, $0
    check_eq send_nmi_dropped, %eax, $0, "send_nmi(0) without an NMI handler returned"
    vcpu_op $99, $0, $0
    check_eq vcpu_op_unknown, %eax, $-ENOSYS, "vcpu_op(99) returned"
    movl $handle_arg, handle_arg
    vcpu_op $T_VCPUOP_register_vcpu_time_memory_area, $0, $handle_arg
    check_eq time_area_enosys, %eax, $-ENOSYS, "register_vcpu_time_memory_area (64-bit only) returned"

/* Step 15: SCHEDOP_watchdog. */
step15_watchdog:
    movl $0, wd_arg
    movl $1000, wd_arg+4
    mov $T_SCHEDOP_watchdog, %ebx
    mov $wd_arg, %ecx
    HYPERCALL __HYPERVISOR_sched_op
    check_eq watchdog_arm, %eax, $1, "watchdog(0, 1000 s) returned"
    movl $1, wd_arg
    movl $0, wd_arg+4
    mov $T_SCHEDOP_watchdog, %ebx
    mov $wd_arg, %ecx
    HYPERCALL __HYPERVISOR_sched_op
    check_eq watchdog_disarm, %eax, $0, "watchdog(1, 0) returned"
    movl $3, wd_arg
    mov $T_SCHEDOP_watchdog, %ebx
    mov $wd_arg, %ecx
    HYPERCALL __HYPERVISOR_sched_op
    check_eq watchdog_bad_id, %eax, $-EINVAL, "watchdog(3, 0) returned"

/* Step 16: register_vcpu_info into a page of ours, once. */
step16_vcpu_info:
    mov vcpu_info_ptr, %ebx
    movb $1, VCPU_upcall_mask(%ebx)
    mov VCPU_time+TIME_tsc_timestamp(%ebx), %eax
    mov %eax, old_stamp
    mov $vinfo_page, %eax
    sub $VIRT_BASE, %eax
    shr $PAGE_SHIFT, %eax               /* its pfn; the p2m (4-byte entries) gives the mfn */
    mov SI_mfn_list(%ebp), %ecx
    mov (%ecx,%eax,4), %eax
    mov %eax, vinfo_arg                 /* {u64 mfn; u32 offset; u32 rsvd} */
    movl $0, vinfo_arg+4
    movl $VINFO_OFFSET, vinfo_arg+8
    movl $0, vinfo_arg+12
    vcpu_op $T_VCPUOP_register_vcpu_info, $0, $vinfo_arg
    check_eq register_vcpu_info, %eax, $0, "register_vcpu_info returned"
    mov $vinfo_page+VINFO_OFFSET, %ebx
    check_eq vcpu_info_copied, VCPU_time+TIME_tsc_timestamp(%ebx), old_stamp, "the moved record's tsc_timestamp (low half) is"
    movzbl VCPU_upcall_mask(%ebx), %eax
    check_eq vcpu_info_mask_copied, %eax, $1, "the moved evtchn_upcall_mask is"
    movzbl VCPU_upcall_pending(%ebx), %eax
    check_eq vcpu_info_pending, %eax, $1, "the moved evtchn_upcall_pending is"
    mov %ebx, vcpu_info_ptr
    vcpu_op $T_VCPUOP_register_vcpu_info, $0, $vinfo_arg
    check_eq register_vcpu_info_once, %eax, $-EINVAL, "a second register_vcpu_info returned"
    movl $0, upcall_count
    mov vcpu_info_ptr, %ebx
    movb $0, VCPU_upcall_mask(%ebx)
    mov $XENVER_version, %ebx           /* any hypercall: the pending upcall comes on return */
    xor %ecx, %ecx
    HYPERCALL __HYPERVISOR_xen_version
    check_eq vcpu_info_upcall, upcall_count, $1, "upcalls through the moved vcpu_info:"
    mov $MSEC, %eax
    call deadline_in
    xor %eax, %eax
    call set_singleshot
    movl $0, timer_events
    mov $(100 * MSEC), %eax
    call wait_event
    check_eq vcpu_info_timer, timer_events, $1, "VIRQ_TIMER events through the moved vcpu_info:"
    mov last_timer_ns, %eax
    mov last_timer_ns+4, %edx
    sub deadline, %eax
    sbb deadline+4, %edx
    call sat32
    check_between vcpu_info_clock, %eax, $0, $(MSEC / 10), "ns from the deadline to the handler, read from the moved record:"
    jmp finish

    NO_SHARED_INFO
    .size main, . - main

/* ---- routines ----------------------------------------------------------------- */

/* pvclock_now(): EDX:EAX = system time in ns, from the record at
 * vcpu_info_ptr with the version protocol; other registers preserved. */
    .type pvclock_now, @function
pvclock_now:
    push %ebx
    push %ecx
    push %esi
    push %edi
    push %ebp
    mov vcpu_info_ptr, %esi
    add $VCPU_time, %esi
1:  mov TIME_version(%esi), %ebp
    test $1, %ebp
    jnz 1b                              /* an update is in progress */
    lfence
    rdtsc
    sub TIME_tsc_timestamp(%esi), %eax
    sbb TIME_tsc_timestamp+4(%esi), %edx
    movsbl TIME_shift(%esi), %ecx
    test %ecx, %ecx
    jz 4f
    js 3f
2:  shld $1, %eax, %edx                 /* delta <<= shift */
    shl $1, %eax
    dec %ecx
    jnz 2b
    jmp 4f
3:  neg %ecx
5:  shrd $1, %edx, %eax                 /* delta >>= -shift */
    shr $1, %edx
    dec %ecx
    jnz 5b
4:  mov %edx, %edi                      /* (delta * mul) >> 32 = hi*mul + (lo*mul >> 32) */
    mull TIME_mul(%esi)
    mov %edx, %ebx
    mov %edi, %eax
    mull TIME_mul(%esi)
    add %ebx, %eax
    adc $0, %edx
    add TIME_system_time(%esi), %eax
    adc TIME_system_time+4(%esi), %edx
    lfence
    cmp TIME_version(%esi), %ebp
    jne 1b                              /* the record changed under us */
    pop %ebp
    pop %edi
    pop %esi
    pop %ecx
    pop %ebx
    ret
    .size pvclock_now, . - pvclock_now

/* sat32(EDX:EAX, signed 64-bit): EAX = the value clamped to a signed 32-bit. */
    .type sat32, @function
sat32:
    push %ecx
    mov %eax, %ecx
    sar $31, %ecx
    cmp %ecx, %edx                      /* fits when EDX is EAX's sign extension */
    je 2f
    test %edx, %edx
    js 1f
    mov $0x7fffffff, %eax
    jmp 2f
1:  mov $0x80000000, %eax
2:  pop %ecx
    ret
    .size sat32, . - sat32

/* deadline_in(EAX = ns, signed): the 64-bit deadline = now + EAX. */
    .type deadline_in, @function
deadline_in:
    push %ecx
    push %edx
    mov %eax, %ecx
    call pvclock_now
    add %ecx, %eax
    adc $0, %edx
    test %ecx, %ecx
    jns 1f
    dec %edx                            /* a negative offset: its sign extension */
1:  mov %eax, deadline
    mov %edx, deadline+4
    pop %edx
    pop %ecx
    ret
    .size deadline_in, . - deadline_in

/* burn(): about 16000 instructions of register arithmetic. */
    .type burn, @function
burn:
    push %eax
    push %ecx
    mov $512, %ecx
1:  .rept 30
    add %ecx, %eax
    .endr
    dec %ecx
    jnz 1b
    pop %ecx
    pop %eax
    ret
    .size burn, . - burn

/* spin_ns(EAX = ns): burn until the clock has moved on by EAX ns. */
    .type spin_ns, @function
spin_ns:
    push %eax
    push %edx
    push %esi
    push %edi
    mov %eax, %esi
    call pvclock_now
    add %eax, %esi
    adc $0, %edx
    mov %edx, %edi                      /* EDI:ESI = the end */
1:  call burn
    call pvclock_now
    cmp %edi, %edx
    jb 1b
    ja 2f
    cmp %esi, %eax
    jb 1b
2:  pop %edi
    pop %esi
    pop %edx
    pop %eax
    ret
    .size spin_ns, . - spin_ns

/* wait_event(EAX = ns): burn until timer_events changes or EAX ns passed. */
    .type wait_event, @function
wait_event:
    push %eax
    push %edx
    push %esi
    push %edi
    push %ebx
    mov timer_events, %ebx
    mov %eax, %esi
    call pvclock_now
    add %eax, %esi
    adc $0, %edx
    mov %edx, %edi
1:  call burn
    cmp timer_events, %ebx
    jne 2f
    call pvclock_now
    cmp %edi, %edx
    jb 1b
    ja 2f
    cmp %esi, %eax
    jb 1b
2:  pop %ebx
    pop %edi
    pop %esi
    pop %edx
    pop %eax
    ret
    .size wait_event, . - wait_event

/* set_singleshot(EAX = flags): VCPUOP_set_singleshot_timer(0) at `deadline`.
 * Returns EAX. */
    .type set_singleshot, @function
set_singleshot:
    push %ebx
    push %ecx
    push %edx
    mov %eax, sst_arg+8
    mov deadline, %eax
    mov %eax, sst_arg
    mov deadline+4, %eax
    mov %eax, sst_arg+4
    vcpu_op $T_VCPUOP_set_singleshot_timer, $0, $sst_arg
    pop %edx
    pop %ecx
    pop %ebx
    ret
    .size set_singleshot, . - set_singleshot

/* timer_port_pending(): EAX = the timer port's pending bit. */
    .type timer_port_pending, @function
timer_port_pending:
    push %ecx
    mov timer_port, %ecx
    bt %ecx, shinfo_page+SHINFO_evtchn_pending
    setc %al
    movzbl %al, %eax
    pop %ecx
    ret
    .size timer_port_pending, . - timer_port_pending

/* reset_timer_port(): forget a pending timer event. */
    .type reset_timer_port, @function
reset_timer_port:
    push %ecx
    push %eax
    mov timer_port, %ecx
    lock btr %ecx, shinfo_page+SHINFO_evtchn_pending
    mov vcpu_info_ptr, %eax
    movl $0, VCPU_pending_sel(%eax)
    movb $0, VCPU_upcall_pending(%eax)
    pop %eax
    pop %ecx
    ret
    .size reset_timer_port, . - reset_timer_port

/* print_got_range(): print_value(lab_got) ", want " lo ".." hi "\n". */
    .type print_got_range, @function
print_got_range:
    mov lab_got, %eax
    call print_value
    print_lit ", want "
    mov rng_lo, %eax
    call print_value
    print_lit ".."
    mov rng_hi, %eax
    call print_value
    call print_nl
    ret
    .size print_got_range, . - print_got_range

/*
 * evtchn_upcall: the event callback, entered in ring 1 with events masked
 * and a frame of EIP, CS, EFLAGS at ESP. The 2-level scan through the
 * current vcpu_info; VIRQ_TIMER events are counted and timed. It returns
 * through the iret stub, which restores the mask from EFLAGS.IF.
 */
    .balign 16
    .type evtchn_upcall, @function
evtchn_upcall:
    pusha
    incl upcall_count
    mov vcpu_info_ptr, %edi
    movb $0, VCPU_upcall_pending(%edi)
    xor %eax, %eax
    xchg %eax, VCPU_pending_sel(%edi)   /* EAX = the words to look at */
upcall_next_word:
    test %eax, %eax
    jz upcall_done
    bsf %eax, %ecx                      /* ECX = word */
    btr %ecx, %eax
    mov shinfo_page+SHINFO_evtchn_pending(,%ecx,4), %edx
    mov shinfo_page+SHINFO_evtchn_mask(,%ecx,4), %esi
    not %esi
    and %esi, %edx                      /* EDX = pending and not masked */
upcall_next_bit:
    test %edx, %edx
    jz upcall_next_word
    bsf %edx, %ebx                      /* EBX = bit */
    btr %ebx, %edx
    lock btr %ebx, shinfo_page+SHINFO_evtchn_pending(,%ecx,4)
    mov %ecx, %esi
    shl $EVTCHN_WORD_SHIFT, %esi
    add %ebx, %esi                      /* ESI = port */
    cmp timer_port, %esi
    jne 1f
    incl timer_events
    push %eax
    push %edx
    call pvclock_now
    mov %eax, last_timer_ns
    mov %edx, last_timer_ns+4
    pop %edx
    pop %eax
    jmp upcall_next_bit
1:  incl other_events
    jmp upcall_next_bit
upcall_done:
    popa
    jmp hypercall_page + __HYPERVISOR_iret * 32
    .size evtchn_upcall, . - evtchn_upcall

/* evtchn_failsafe: this guest never changes its segments. */
    LAB_FAILSAFE_DEFINE

/* ---- data --------------------------------------------------------------------- */
    .data
    .balign 8
start_info_va:          .long 0
shinfo_rc:              .long -1
vcpu_info_ptr:          .long 0         /* where our vcpu_info is (moves in step 16) */
timer_port:             .long 0
boot_version:           .long 0
version_before:         .long 0
backwards:              .long 0
loops:                  .long 0
wc_version:             .long 0
wc_sec:                 .long 0
rng_lo:                 .long 0         /* the range of the last check_between */
rng_hi:                 .long 0
upcall_count:           .long 0
timer_events:           .long 0         /* VIRQ_TIMER events seen by the handler */
other_events:           .long 0
block_rc:               .long 0
late:                   .long 0
window:                 .long 0
old_stamp:              .long 0
    .balign 8
t_first:                .quad 0
last_timer_ns:          .quad 0         /* the clock when the handler saw the last one */
deadline:               .quad 0
block_start:            .quad 0
/* hypercall argument structures (compat layouts) */
virq_arg:               .long 0, 0, 0   /* bind_virq {virq, vcpu; OUT port} */
    .balign 8
period_arg:             .quad 0         /* vcpu_set_periodic_timer {u64 period_ns} */
sst_arg:                .long 0, 0, 0   /* vcpu_set_singleshot_timer {u64 timeout; u32 flags} */
    .balign 8
poll_arg:               .long 0, 0, 0, 0 /* sched_poll {ports; nr_ports; u64 timeout} */
handle_arg:             .long 0, 0      /* {union {ptr; u64} addr} */
vinfo_arg:              .long 0, 0, 0, 0 /* vcpu_register_vcpu_info {u64 mfn; u32 offset, rsvd} */
wd_arg:                 .long 0, 0      /* sched_watchdog {u32 id; u32 timeout} */
runstate_area:          .fill RUNSTATE_SIZE, 1, 0
    .balign 8
runstate_info:          .fill RUNSTATE_SIZE, 1, 0

/* ---- bss ---------------------------------------------------------------------- */
    .bss
    .balign PAGE_SIZE
shinfo_page:            .skip PAGE_SIZE /* shared_info is mapped here (step 1) */
vinfo_page:             .skip PAGE_SIZE /* register_vcpu_info moves vcpu_info here */
    .balign 16
stack:                  .skip 16384
stack_top:
