/*
 * events-pv64.S - lab guest: event channels, upcalls and masking, x86_64 PV.
 *
 * The guest side of Xen's 2-level event channels (common/event_channel.c,
 * event_2l.c). It maps shared_info, registers its event callback, makes
 * itself a loopback interdomain channel (alloc_unbound + bind_interdomain to
 * its own domain), an IPI and a VIRQ, and checks what Xen does with them:
 *
 *   - EVTCHNOP_status of every kind of port (and of the console's port, which
 *     the toolstack connected to dom0);
 *   - with the vCPU's evtchn_upcall_mask set, a send only marks the port
 *     pending, sets its evtchn_pending_sel bit and evtchn_upcall_pending;
 *   - once the guest clears the mask and makes any hypercall, Xen makes the
 *     upcall: a bounce frame on the kernel stack (RCX, R11, RIP, CS with the
 *     saved mask in bits 32-39, RFLAGS, RSP, SS), events masked on entry; the
 *     handler scans the two levels, clears what it saw and returns with the
 *     iret hypercall, which restores the mask from the frame's RFLAGS.IF;
 *   - a send to a masked port leaves the selector alone; EVTCHNOP_unmask of
 *     that pending port re-raises it;
 *   - close, and the errors for bad ports, bind_pirq and the FIFO ABI.
 *
 * Each step prints "CHECK <name>: ok" or "CHECK <name>: FAIL <what> <got>,
 * want <want>"; then "RESULT: PASS" or "RESULT: FAIL", and the guest powers
 * itself off. The expected values are those of real Xen (but for the FIFO
 * ABI, which xendbg does not offer: step 16); a FAIL line says what the
 * hypervisor returned instead.
 *
 * Entry state (Xen): ring 3 in guest kernel mode, RSI = start_info,
 * evtchn_upcall_mask = 1. Registers in main: R15 = start_info. Events stay
 * masked except inside the short windows that test delivery.
 */
#include "xen-pv64.inc"

#define UNUSED_PORT     20      /* never allocated; inside the first bucket of ports
                                   Xen creates for every domain, so it is "valid" but free */
#define SEEN_PORTS      64      /* the upcall handler counts deliveries of ports below this */
#define UPCALL_STORM    8       /* more upcalls than this in one window: stop them */
#define BAD_PIRQ        1       /* a PIRQ number below nr_pirqs that a domU may not bind */
#define PTE_SHINFO      (_PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY)

/* ---- Xen ELF notes ------------------------------------------------------------ */
    LAB_NOTES

    HYPERCALL_PAGE_DEFINE
    LAB_LIB_DEFINE

/* ---- helpers for this guest ------------------------------------------------- */

/* bit_of BASE, PORT: RAX = bit PORT of the bitmap at shared_info+BASE (0 or 1).
 * PORT is a register or memory operand; clobbers RAX and RCX. */
.macro bit_of base, port
    mov \port, %ecx
    lea shinfo_page+\base(%rip), %rax
    bt %rcx, (%rax)
    setc %al
    movzbl %al, %eax
.endm

/* sel_bit_of PORT: RAX = the evtchn_pending_sel bit of PORT's word. */
.macro sel_bit_of port
    mov \port, %ecx
    shr $EVTCHN_WORD_SHIFT, %ecx
    bt %rcx, shinfo_page+VCPU_pending_sel(%rip)
    setc %al
    movzbl %al, %eax
.endm

/* seen_of PORT: RAX = how many times the upcall handler saw PORT. */
.macro seen_of port
    mov \port, %ecx
    lea seen(%rip), %rax
    movzbl (%rax,%rcx), %eax
.endm

/* port_op CMD, PORT: EVTCHNOP_CMD on {u32 port} (send, close, unmask). RAX = rc. */
.macro port_op cmd, port
    mov \port, %esi
    mov $\cmd, %edi
    call evtchn_port_op
.endm

/* check_status NAME, PORT, STATUS: EVTCHNOP_status of PORT returns 0 with
 * status STATUS and vCPU 0; the answer stays in es_buf. */
.macro check_status name, port, status
    mov \port, %edi
    mov $\status, %esi
    call status_check
    test %rax, %rax
    jnz .Lcs_bad\@
    check_ok \name
    jmp .Lcs_done\@
.Lcs_bad\@:
    check_fail_start \name, "EVTCHNOP_status"
    call status_explain
.Lcs_done\@:
.endm

/* ---- entry ------------------------------------------------------------------- */
    LAB_START

    .text
    .type main, @function
main:
    mov start_info_va(%rip), %r15
    print_lit "events-pv64: event channels, upcalls and masking\n"

/* Step 1: map shared_info (its machine address is in start_info) over a page
 * of our .bss with update_va_mapping. Xen lets a domain map its shared_info
 * page read-write. At boot the vCPU's events are masked. */
step1_shared_info:
    MAP_SHARED_INFO %r15, PTE_SHINFO
    CHECK_SHARED_INFO_MAPPED
    movzbl shinfo_page+VCPU_upcall_mask(%rip), %eax
    check_eq boot_masked, %rax, $1, "vcpu_info[0].evtchn_upcall_mask at entry is"

/* Step 2: register the event and failsafe callbacks with callback_op, as Linux
 * does (set_callbacks would do as well). */
step2_callbacks:
    REGISTER_CALLBACK CALLBACKTYPE_event, evtchn_upcall
    check_eq callback_event, %rax, $0, "callback_op(register, event) returned"
    REGISTER_CALLBACK CALLBACKTYPE_failsafe, evtchn_failsafe
    check_eq callback_failsafe, %rax, $0, "callback_op(register, failsafe) returned"

/* Step 3: the console's port was connected by the toolstack to the console
 * backend in dom0: interdomain, remote domain 0. */
step3_console_port:
    mov SI_console_evtchn(%r15), %eax
    mov %eax, console_port(%rip)
    check_status status_console, console_port(%rip), EVTCHNSTAT_interdomain
    movzwl es_buf+ES_u_dom(%rip), %eax
    check_eq status_console_dom, %rax, $0, "the console port's remote domain is"

/* Step 4: alloc_unbound(dom = DOMID_SELF, remote_dom = DOMID_SELF): a port A
 * that our own domain may bind to. Xen records the caller's real domid as the
 * remote domain, which tells us our domid. */
step4_alloc_unbound:
    movw $DOMID_SELF, au_arg(%rip)
    movw $DOMID_SELF, au_arg+2(%rip)
    movl $0, au_arg+4(%rip)
    mov $EVTCHNOP_alloc_unbound, %edi
    lea au_arg(%rip), %rsi
    HYPERCALL __HYPERVISOR_event_channel_op
    check_eq alloc_unbound, %rax, $0, "EVTCHNOP_alloc_unbound returned"
    mov au_arg+4(%rip), %eax
    mov %eax, port_a(%rip)
    check_status status_unbound, port_a(%rip), EVTCHNSTAT_unbound
    movzwl es_buf+ES_u_dom(%rip), %eax
    mov %rax, my_domid(%rip)
    cmp $DOMID_SELF, %eax
    je 1f
    test %eax, %eax
    jz 1f
    check_ok unbound_remote_domid
    jmp step5_bind_interdomain
1:  check_fail_val unbound_remote_domid, my_domid(%rip), "the unbound port's remote domain is not our domid but"

/* Step 5: bind_interdomain(remote_dom = DOMID_SELF, remote_port = A) gives a
 * port B; A and B are now the two ends of one channel. Xen sets B pending at
 * once, in case the remote end was signalled while it was unbound. */
step5_bind_interdomain:
    movw $DOMID_SELF, bi_arg(%rip)
    mov port_a(%rip), %eax
    mov %eax, bi_arg+4(%rip)
    movl $0, bi_arg+8(%rip)
    mov $EVTCHNOP_bind_interdomain, %edi
    lea bi_arg(%rip), %rsi
    HYPERCALL __HYPERVISOR_event_channel_op
    check_eq bind_interdomain, %rax, $0, "EVTCHNOP_bind_interdomain returned"
    mov bi_arg+8(%rip), %eax
    mov %eax, port_b(%rip)
    bit_of SHINFO_evtchn_pending, port_b(%rip)
    check_eq bind_interdomain_pending, %rax, $1, "pending bit of the new local port after bind is"
    check_status status_interdomain, port_b(%rip), EVTCHNSTAT_interdomain
    movzwl es_buf+ES_u_dom(%rip), %eax
    check_eq status_interdomain_dom, %rax, my_domid(%rip), "interdomain remote domain of B is"
    check_eq32 status_interdomain_port, es_buf+ES_u_port(%rip), port_a(%rip), "interdomain remote port of B is"
    check_status status_interdomain_peer, port_a(%rip), EVTCHNSTAT_interdomain
    check_eq32 status_interdomain_peer_port, es_buf+ES_u_port(%rip), port_b(%rip), "interdomain remote port of A is"

/* Step 6: bind_ipi(vCPU 0): a port C that signals ourselves. */
step6_bind_ipi:
    movl $0, ipi_arg(%rip)
    movl $0, ipi_arg+4(%rip)
    mov $EVTCHNOP_bind_ipi, %edi
    lea ipi_arg(%rip), %rsi
    HYPERCALL __HYPERVISOR_event_channel_op
    check_eq bind_ipi, %rax, $0, "EVTCHNOP_bind_ipi returned"
    mov ipi_arg+4(%rip), %eax
    mov %eax, port_c(%rip)
    check_status status_ipi, port_c(%rip), EVTCHNSTAT_ipi

/* Step 7: bind_virq(VIRQ_DEBUG, vCPU 0): a port D (VIRQ_DEBUG fires only on a
 * debug key, so nothing raises it behind our back). A second bind of the same
 * VIRQ on the same vCPU is refused with -EEXIST. */
step7_bind_virq:
    BIND_VIRQ VIRQ_DEBUG
    check_eq bind_virq, %rax, $0, "EVTCHNOP_bind_virq(VIRQ_DEBUG) returned"
    mov virq_arg+8(%rip), %eax
    mov %eax, port_d(%rip)
    check_status status_virq, port_d(%rip), EVTCHNSTAT_virq
    check_eq32 status_virq_number, es_buf+ES_u_virq(%rip), $VIRQ_DEBUG, "the VIRQ of D is"
    mov $EVTCHNOP_bind_virq, %edi
    lea virq_arg(%rip), %rsi
    HYPERCALL __HYPERVISOR_event_channel_op
    check_eq bind_virq_twice, %rax, $-EEXIST, "a second EVTCHNOP_bind_virq(VIRQ_DEBUG) returned"

/* Step 8: delivery while the vCPU is masked. Start clean, then send on B
 * (which raises its remote end A) and on the IPI port C. Xen marks both
 * pending, sets their word's bit in evtchn_pending_sel and
 * evtchn_upcall_pending, and makes no upcall. */
step8_masked_delivery:
    call reset_events
    port_op EVTCHNOP_send, port_b(%rip)
    check_eq send_interdomain, %rax, $0, "EVTCHNOP_send(B) returned"
    port_op EVTCHNOP_send, port_c(%rip)
    check_eq send_ipi, %rax, $0, "EVTCHNOP_send(C) returned"
    bit_of SHINFO_evtchn_pending, port_a(%rip)
    check_eq masked_pending_remote, %rax, $1, "pending bit of A (the remote end of B) is"
    bit_of SHINFO_evtchn_pending, port_c(%rip)
    check_eq masked_pending_ipi, %rax, $1, "pending bit of C is"
    sel_bit_of port_a(%rip)
    check_eq masked_selector, %rax, $1, "evtchn_pending_sel bit of A's word is"
    movzbl shinfo_page+VCPU_upcall_pending(%rip), %eax
    check_eq masked_upcall_pending, %rax, $1, "evtchn_upcall_pending is"
    check_eq masked_no_upcall, upcall_count(%rip), $0, "upcalls made while masked:"

/* Step 9: clear the mask and make a hypercall: on its way back Xen delivers
 * the pending events (that is how Linux forces a pending upcall). The handler
 * sees A and C in its scan; its iret returns here with the hypercall's result
 * intact, and the frame's RFLAGS.IF unmasks events again. */
step9_upcall:
    mov $XENVER_version, %edi
    xor %esi, %esi
    HYPERCALL __HYPERVISOR_xen_version
    mov %rax, version(%rip)
    movq $0, upcall_count(%rip)
    mov %rsp, upcall_rsp_before(%rip)
    movb $0, shinfo_page+VCPU_upcall_mask(%rip)
    mov $XENVER_version, %edi
    xor %esi, %esi
upcall_hypercall:
    HYPERCALL_DIRECT __HYPERVISOR_xen_version
upcall_hypercall_return:
    mov %rax, upcall_result(%rip)
    movzbl shinfo_page+VCPU_upcall_mask(%rip), %eax
    mov %rax, mask_after_iret(%rip)
    movb $1, shinfo_page+VCPU_upcall_mask(%rip)
upcall_verify:
    check_eq upcall, upcall_count(%rip), $1, "upcalls made after unmasking:"
    seen_of port_a(%rip)
    check_eq upcall_sees_remote, %rax, $1, "the handler's scan found A (times):"
    seen_of port_c(%rip)
    check_eq upcall_sees_ipi, %rax, $1, "the handler's scan found C (times):"
    check_eq upcall_masked_on_entry, upcall_mask_on_entry(%rip), $1, "evtchn_upcall_mask in the handler is"
    lea upcall_hypercall_return(%rip), %rdx
    check_eq upcall_frame_rip, upcall_frame+BF_rip(%rip), %rdx, "frame RIP (want the instruction after the syscall) is"
    movzwl upcall_frame+BF_cs(%rip), %eax
    check_eq upcall_frame_cs, %rax, $KERNEL_CS_RPL0, "frame CS selector is"
    mov upcall_frame+BF_cs(%rip), %rax
    shr $32, %rax
    and $0xff, %eax
    check_eq upcall_frame_saved_mask, %rax, $0, "saved upcall mask (frame CS bits 32-39) is"
    check_eq upcall_frame_sp, upcall_frame+BF_rsp(%rip), upcall_rsp_before(%rip), "frame RSP (want the RSP of the interrupted code) is"
    mov upcall_frame+BF_rflags(%rip), %rax
    and $RFLAGS_IF, %eax
    check_eq upcall_frame_if, %rax, $RFLAGS_IF, "frame RFLAGS.IF (events were enabled) is"
    check_eq iret_restores_mask, mask_after_iret(%rip), $0, "evtchn_upcall_mask after the iret is"
    check_eq upcall_preserves_result, upcall_result(%rip), version(%rip), "the interrupted hypercall's result is"
    bit_of SHINFO_evtchn_pending, port_a(%rip)
    mov %rax, %rdx
    bit_of SHINFO_evtchn_pending, port_c(%rip)
    add %rdx, %rax
    movzbl shinfo_page+VCPU_upcall_pending(%rip), %edx
    add %rdx, %rax
    check_eq upcall_consumed, %rax, $0, "pending(A) + pending(C) + evtchn_upcall_pending after the handler:"

/* Step 10: a masked port. With A's bit set in evtchn_mask, a send on B only
 * sets A's pending bit: no selector bit, no evtchn_upcall_pending. Unmasking
 * A with EVTCHNOP_unmask re-raises it (selector and upcall_pending set), and
 * the next unmasked hypercall delivers it. */
step10_masked_port:
    call reset_events
    mov port_a(%rip), %ecx
    lock bts %rcx, shinfo_page+SHINFO_evtchn_mask(%rip)
    port_op EVTCHNOP_send, port_b(%rip)
    check_eq send_to_masked, %rax, $0, "EVTCHNOP_send(B) with A masked returned"
    bit_of SHINFO_evtchn_pending, port_a(%rip)
    check_eq masked_port_pending, %rax, $1, "pending bit of the masked port A is"
    sel_bit_of port_a(%rip)
    movzbl shinfo_page+VCPU_upcall_pending(%rip), %edx
    add %rdx, %rax
    check_eq masked_port_quiet, %rax, $0, "selector bit + evtchn_upcall_pending for a masked port:"
    port_op EVTCHNOP_unmask, port_a(%rip)
    check_eq unmask, %rax, $0, "EVTCHNOP_unmask(A) returned"
    bit_of SHINFO_evtchn_mask, port_a(%rip)
    check_eq unmask_clears_mask, %rax, $0, "mask bit of A after unmask is"
    sel_bit_of port_a(%rip)
    movzbl shinfo_page+VCPU_upcall_pending(%rip), %edx
    add %rdx, %rax
    check_eq unmask_reraises, %rax, $2, "selector bit + evtchn_upcall_pending after unmask:"
    check_eq unmask_no_upcall_while_masked, upcall_count(%rip), $0, "upcalls while the vCPU is masked:"
    movb $0, shinfo_page+VCPU_upcall_mask(%rip)
    mov $XENVER_version, %edi
    xor %esi, %esi
    HYPERCALL __HYPERVISOR_xen_version
    movb $1, shinfo_page+VCPU_upcall_mask(%rip)
    check_eq unmask_upcall, upcall_count(%rip), $1, "upcalls after unmasking the vCPU:"
    seen_of port_a(%rip)
    check_eq unmask_upcall_port, %rax, $1, "the handler's scan found A (times):"

/* Step 11: bind_vcpu moves an interdomain port to a vCPU; an IPI port cannot
 * move (-EINVAL) and a vCPU we do not have is -ENOENT. */
step11_bind_vcpu:
    mov port_a(%rip), %esi
    xor %edx, %edx
    call evtchn_bind_vcpu
    check_eq bind_vcpu, %rax, $0, "EVTCHNOP_bind_vcpu(A, 0) returned"
    mov port_c(%rip), %esi
    xor %edx, %edx
    call evtchn_bind_vcpu
    check_eq bind_vcpu_ipi, %rax, $-EINVAL, "EVTCHNOP_bind_vcpu(IPI port, 0) returned"
    mov port_a(%rip), %esi
    mov $1, %edx
    call evtchn_bind_vcpu
    check_eq bind_vcpu_no_vcpu, %rax, $-ENOENT, "EVTCHNOP_bind_vcpu(A, vCPU 1 of a 1-vCPU domain) returned"

/* Step 12: a VIRQ port cannot be sent on. */
step12_send_virq:
    port_op EVTCHNOP_send, port_d(%rip)
    check_eq send_virq, %rax, $-EINVAL, "EVTCHNOP_send(VIRQ port) returned"

/* Step 13: close B. A reverts to unbound (remote: our domain); B is closed
 * and a second close of it is -EINVAL. Then close A, C and D. */
step13_close:
    port_op EVTCHNOP_close, port_b(%rip)
    check_eq close_interdomain, %rax, $0, "EVTCHNOP_close(B) returned"
    check_status status_closed, port_b(%rip), EVTCHNSTAT_closed
    check_status close_reverts_peer, port_a(%rip), EVTCHNSTAT_unbound
    movzwl es_buf+ES_u_dom(%rip), %eax
    check_eq close_reverts_peer_dom, %rax, my_domid(%rip), "A's remote domain after closing B is"
    port_op EVTCHNOP_close, port_b(%rip)
    check_eq close_twice, %rax, $-EINVAL, "a second EVTCHNOP_close(B) returned"
    port_op EVTCHNOP_close, port_a(%rip)
    check_eq close_unbound, %rax, $0, "EVTCHNOP_close(A) returned"
    port_op EVTCHNOP_close, port_c(%rip)
    check_eq close_ipi, %rax, $0, "EVTCHNOP_close(C) returned"
    port_op EVTCHNOP_close, port_d(%rip)
    check_eq close_virq, %rax, $0, "EVTCHNOP_close(D) returned"
    check_status status_closed_virq, port_d(%rip), EVTCHNSTAT_closed

/* Step 14: bad ports. Port 0 is reserved and UNUSED_PORT free: both are valid
 * port numbers to Xen, so status says "closed" and unmask succeeds, while
 * send, close and bind_vcpu refuse them (-EINVAL). NR_EVENT_CHANNELS is not a
 * port at all: -EINVAL everywhere. */
step14_bad_ports:
    port_op EVTCHNOP_send, $0
    check_eq bad_send_port0, %rax, $-EINVAL, "EVTCHNOP_send(0) returned"
    port_op EVTCHNOP_send, $UNUSED_PORT
    check_eq bad_send_unused, %rax, $-EINVAL, "EVTCHNOP_send(unused port) returned"
    port_op EVTCHNOP_send, $NR_EVENT_CHANNELS
    check_eq bad_send_nr, %rax, $-EINVAL, "EVTCHNOP_send(NR_EVENT_CHANNELS) returned"
    port_op EVTCHNOP_close, $0
    check_eq bad_close_port0, %rax, $-EINVAL, "EVTCHNOP_close(0) returned"
    port_op EVTCHNOP_close, $UNUSED_PORT
    check_eq bad_close_unused, %rax, $-EINVAL, "EVTCHNOP_close(unused port) returned"
    port_op EVTCHNOP_close, $NR_EVENT_CHANNELS
    check_eq bad_close_nr, %rax, $-EINVAL, "EVTCHNOP_close(NR_EVENT_CHANNELS) returned"
    port_op EVTCHNOP_unmask, $0
    check_eq bad_unmask_port0, %rax, $0, "EVTCHNOP_unmask(0) returned"
    port_op EVTCHNOP_unmask, $UNUSED_PORT
    check_eq bad_unmask_unused, %rax, $0, "EVTCHNOP_unmask(unused port) returned"
    port_op EVTCHNOP_unmask, $NR_EVENT_CHANNELS
    check_eq bad_unmask_nr, %rax, $-EINVAL, "EVTCHNOP_unmask(NR_EVENT_CHANNELS) returned"
    check_status bad_status_port0, $0, EVTCHNSTAT_closed
    check_status bad_status_unused, $UNUSED_PORT, EVTCHNSTAT_closed
    mov $NR_EVENT_CHANNELS, %edi
    call evtchn_status_of
    check_eq bad_status_nr, %rax, $-EINVAL, "EVTCHNOP_status(NR_EVENT_CHANNELS) returned"
    xor %esi, %esi
    xor %edx, %edx
    call evtchn_bind_vcpu
    check_eq bad_bind_vcpu_port0, %rax, $-EINVAL, "EVTCHNOP_bind_vcpu(0, 0) returned"
    mov $UNUSED_PORT, %esi
    xor %edx, %edx
    call evtchn_bind_vcpu
    check_eq bad_bind_vcpu_unused, %rax, $-EINVAL, "EVTCHNOP_bind_vcpu(unused port, 0) returned"
    mov $NR_EVENT_CHANNELS, %esi
    xor %edx, %edx
    call evtchn_bind_vcpu
    check_eq bad_bind_vcpu_nr, %rax, $-EINVAL, "EVTCHNOP_bind_vcpu(NR_EVENT_CHANNELS, 0) returned"

/* Step 15: physical IRQs are for privileged domains: bind_pirq is -EPERM. */
step15_bind_pirq:
    movl $BAD_PIRQ, pirq_arg(%rip)
    movl $0, pirq_arg+4(%rip)
    movl $0, pirq_arg+8(%rip)
    mov $EVTCHNOP_bind_pirq, %edi
    lea pirq_arg(%rip), %rsi
    HYPERCALL __HYPERVISOR_event_channel_op
    check_eq bind_pirq, %rax, $-EPERM, "EVTCHNOP_bind_pirq(1) returned"

/* Step 16: EVTCHNOP_init_control (the FIFO ABI) fails, which is what makes a
 * guest stay with the 2-level ABI. Any error will do. This is xendbg's Xen,
 * which offers only the 2-level ABI (issue 4): a real Xen built with FIFO
 * support would accept this control block (one of our own frames, offset 0,
 * vCPU 0), which is why a valid one is passed. */
step16_fifo:
    lea fifo_page(%rip), %rax
    movabs $VIRT_BASE, %rcx
    sub %rcx, %rax
    shr $PAGE_SHIFT, %rax               /* its pfn; for a PV guest a gfn is an mfn */
    mov SI_mfn_list(%r15), %rcx
    mov (%rcx,%rax,8), %rax
    mov %rax, fifo_arg(%rip)            /* control_gfn: a page of ours */
    movq $0, fifo_arg+8(%rip)           /* offset 0, vcpu 0 */
    mov $EVTCHNOP_init_control, %edi
    lea fifo_arg(%rip), %rsi
    HYPERCALL __HYPERVISOR_event_channel_op
    mov %rax, fifo_rc(%rip)
    test %rax, %rax
    check_cond s, fifo_refused, fifo_rc(%rip), "EVTCHNOP_init_control did not fail, it returned"

/* Step 17: the compat form (hypercall 16) takes {u32 cmd; union}: the same
 * status of the console port. */
step17_compat:
    movl $EVTCHNOP_status, compat_arg(%rip)
    movw $DOMID_SELF, compat_arg+4+ES_dom(%rip)
    mov console_port(%rip), %eax
    mov %eax, compat_arg+4+ES_port(%rip)
    movl $-1, compat_arg+4+ES_status(%rip)
    lea compat_arg(%rip), %rdi
    HYPERCALL __HYPERVISOR_event_channel_op_compat
    check_eq compat_status, %rax, $0, "event_channel_op_compat(status) returned"
    check_eq32 compat_status_kind, compat_arg+4+ES_status(%rip), $EVTCHNSTAT_interdomain, "its status of the console port is"
    jmp finish

    NO_SHARED_INFO
    .size main, . - main

/* ---- routines ----------------------------------------------------------------- */

/* evtchn_port_op(RDI = cmd, RSI = port): event_channel_op(cmd, &{u32 port}).
 * Returns RAX; preserves every other register. */
    .type evtchn_port_op, @function
evtchn_port_op:
    push %rdi
    push %rsi
    mov %esi, port_arg(%rip)
    lea port_arg(%rip), %rsi
    HYPERCALL __HYPERVISOR_event_channel_op
    pop %rsi
    pop %rdi
    ret
    .size evtchn_port_op, . - evtchn_port_op

/* evtchn_bind_vcpu(RSI = port, RDX = vcpu): EVTCHNOP_bind_vcpu. Returns RAX. */
    .type evtchn_bind_vcpu, @function
evtchn_bind_vcpu:
    push %rdi
    push %rsi
    mov %esi, port_arg(%rip)
    mov %edx, port_arg+4(%rip)
    mov $EVTCHNOP_bind_vcpu, %edi
    lea port_arg(%rip), %rsi
    HYPERCALL __HYPERVISOR_event_channel_op
    pop %rsi
    pop %rdi
    ret
    .size evtchn_bind_vcpu, . - evtchn_bind_vcpu

/* evtchn_status_of(RDI = port): EVTCHNOP_status on {DOMID_SELF, port} into
 * es_buf (its OUT fields poisoned first, so a stale answer cannot pass).
 * Returns RAX. */
    .type evtchn_status_of, @function
evtchn_status_of:
    push %rdi
    push %rsi
    movl $DOMID_SELF, es_buf+ES_dom(%rip)
    mov %edi, es_buf+ES_port(%rip)
    movl $0xeeeeeeee, es_buf+ES_status(%rip)
    movl $0xeeeeeeee, es_buf+ES_vcpu(%rip)
    movq $-1, es_buf+ES_u_dom(%rip)
    mov $EVTCHNOP_status, %edi
    lea es_buf(%rip), %rsi
    HYPERCALL __HYPERVISOR_event_channel_op
    pop %rsi
    pop %rdi
    ret
    .size evtchn_status_of, . - evtchn_status_of

/* status_check(RDI = port, RSI = want_status): RAX = 0 if EVTCHNOP_status
 * returned 0 with that status and vCPU 0, else 1; keeps what it saw for
 * status_explain. */
    .type status_check, @function
status_check:
    mov %edi, st_port(%rip)
    mov %rsi, st_want(%rip)
    call evtchn_status_of
    mov %rax, st_rc(%rip)
    test %rax, %rax
    jnz 1f
    mov es_buf+ES_status(%rip), %eax
    cmp st_want(%rip), %rax
    jne 1f
    cmpl $0, es_buf+ES_vcpu(%rip)
    jne 1f
    xor %eax, %eax
    ret
1:  mov $1, %eax
    ret
    .size status_check, . - status_check

/* status_explain: the rest of a failed check_status line. */
    .type status_explain, @function
status_explain:
    push %rdi
    print_lit "of port "
    mov st_port(%rip), %edi
    call print_value
    print_lit " returned "
    mov st_rc(%rip), %rdi
    call print_value
    cmpq $0, st_rc(%rip)
    jne 1f
    print_lit " with status "
    mov es_buf+ES_status(%rip), %edi
    call print_value
    print_lit " vcpu "
    mov es_buf+ES_vcpu(%rip), %edi
    call print_value
1:  print_lit ", want 0 with status "
    mov st_want(%rip), %rdi
    call print_value
    print_lit " vcpu 0\n"
    pop %rdi
    ret
    .size status_explain, . - status_explain

/* reset_events: a known starting point for a delivery test. Clears the
 * pending and mask bits of ports 0-63 (all of ours), the selector,
 * evtchn_upcall_pending, and the handler's counters. The vCPU stays masked. */
    .type reset_events, @function
reset_events:
    push %rcx
    push %rdi
    xor %eax, %eax
    xchg %rax, shinfo_page+SHINFO_evtchn_pending(%rip)
    xor %eax, %eax
    xchg %rax, shinfo_page+SHINFO_evtchn_mask(%rip)
    xor %eax, %eax
    xchg %rax, shinfo_page+VCPU_pending_sel(%rip)
    movb $0, shinfo_page+VCPU_upcall_pending(%rip)
    movq $0, upcall_count(%rip)
    lea seen(%rip), %rdi
    mov $SEEN_PORTS, %ecx
    xor %eax, %eax
    rep stosb
    pop %rdi
    pop %rcx
    ret
    .size reset_events, . - reset_events

/*
 * evtchn_upcall: the event callback. Xen enters it with events masked and
 * this frame at RSP: RCX, R11, RIP, CS (saved mask in bits 32-39), RFLAGS,
 * RSP, SS. It keeps a copy of the frame, then does the 2-level scan:
 * clear evtchn_upcall_pending, take (xchg) evtchn_pending_sel, and for each
 * selected word every pending & ~masked bit, cleared with lock btr and counted
 * in seen[]. It returns with the iret hypercall (the stub pushes RCX, R11,
 * RAX above our flags word), which restores the mask from RFLAGS.IF. Every
 * register of the interrupted code is preserved.
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
#define UPCALL_SAVED 56                 /* the frame is at UPCALL_SAVED(%rsp) */
    incq upcall_count(%rip)
    .irp i, 0, 1, 2, 3, 4, 5, 6
    mov UPCALL_SAVED+\i*8(%rsp), %rax
    mov %rax, upcall_frame+\i*8(%rip)
    .endr
    movzbl shinfo_page+VCPU_upcall_mask(%rip), %eax
    mov %rax, upcall_mask_on_entry(%rip)
    lea shinfo_page(%rip), %rsi
    movb $0, VCPU_upcall_pending(%rsi)
    xor %eax, %eax
    xchg %rax, VCPU_pending_sel(%rsi)   /* RAX = the words to look at */
upcall_next_word:
    test %rax, %rax
    jz upcall_scanned
    bsf %rax, %rcx                      /* RCX = word */
    btr %rcx, %rax
    mov SHINFO_evtchn_pending(%rsi,%rcx,8), %rdx
    mov SHINFO_evtchn_mask(%rsi,%rcx,8), %rdi
    not %rdi
    and %rdi, %rdx                      /* RDX = pending and not masked */
upcall_next_bit:
    test %rdx, %rdx
    jz upcall_next_word
    bsf %rdx, %r8                       /* R8 = bit */
    btr %r8, %rdx
    lock btr %r8, SHINFO_evtchn_pending(%rsi,%rcx,8)
    mov %rcx, %r9
    shl $EVTCHN_WORD_SHIFT, %r9
    add %r8, %r9                        /* R9 = port */
    cmp $SEEN_PORTS, %r9
    jae 1f
    lea seen(%rip), %rdi
    incb (%rdi,%r9)
    jmp upcall_next_bit
1:  incq seen_other(%rip)
    jmp upcall_next_bit
upcall_scanned:
    cmpq $UPCALL_STORM, upcall_count(%rip)
    jb 1f
    /* Too many upcalls: return with IF clear, which leaves events masked. */
    andq $~RFLAGS_IF, UPCALL_SAVED+BF_rflags(%rsp)
1:  pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rax
upcall_iret:
    pop %rcx                            /* the interrupted RCX and R11 */
    pop %r11
    pushq $0                            /* iret flags: not VGCF_in_syscall */
    jmp hypercall_page + __HYPERVISOR_iret * 32
    .size evtchn_upcall, . - evtchn_upcall

/* evtchn_failsafe: Xen enters it when it cannot return to the guest with the
 * segments the guest had. This guest never changes its segments. */
    LAB_FAILSAFE_DEFINE

/* ---- data --------------------------------------------------------------------- */
    .data
    .balign 8
start_info_va:          .quad 0
shinfo_rc:              .quad -1
my_domid:               .quad 0         /* learnt from alloc_unbound's status */
console_port:           .long 0
port_a:                 .long 0         /* alloc_unbound */
port_b:                 .long 0         /* bind_interdomain to A */
port_c:                 .long 0         /* bind_ipi */
port_d:                 .long 0         /* bind_virq(VIRQ_DEBUG) */
    .balign 8
version:                .quad 0
upcall_result:          .quad 0
upcall_rsp_before:      .quad 0
mask_after_iret:        .quad 0
upcall_count:           .quad 0
upcall_mask_on_entry:   .quad 0
seen_other:             .quad 0         /* deliveries of ports >= SEEN_PORTS */
upcall_frame:           .fill 7, 8, 0   /* copy of the last upcall's bounce frame */
fifo_rc:                .quad 0
st_port:                .quad 0         /* what the last status_check saw */
st_want:                .quad 0
st_rc:                  .quad 0
/* hypercall argument structures (event_channel.h, callback.h) */
port_arg:               .long 0, 0      /* {port} / bind_vcpu {port, vcpu} */
au_arg:                 .long 0, 0      /* alloc_unbound {u16 dom, u16 remote_dom; OUT port} */
bi_arg:                 .long 0, 0, 0   /* bind_interdomain {u16 remote_dom; remote_port; OUT local_port} */
ipi_arg:                .long 0, 0      /* bind_ipi {vcpu; OUT port} */
virq_arg:               .long 0, 0, 0   /* bind_virq {virq, vcpu; OUT port} */
pirq_arg:               .long 0, 0, 0   /* bind_pirq {pirq, flags; OUT port} */
    .balign 8
es_buf:                 .fill EVTCHN_STATUS_SIZE, 1, 0
cb_arg:                 .quad 0, 0      /* callback_register {u16 type, u16 flags; u64 address} */
fifo_arg:               .quad 0, 0, 0   /* init_control {u64 control_gfn; u32 offset, vcpu; OUT ...} */
compat_arg:             .fill 32, 1, 0  /* evtchn_op {u32 cmd; union (28 bytes)} */

/* ---- bss ---------------------------------------------------------------------- */
    .bss
    .balign PAGE_SIZE
shinfo_page:            .skip PAGE_SIZE /* shared_info is mapped here (step 1) */
fifo_page:              .skip PAGE_SIZE /* offered to init_control, never used */
seen:                   .skip SEEN_PORTS /* seen[port]: deliveries found by the handler */
    .balign 16
stack:                  .skip 16384
stack_top:
