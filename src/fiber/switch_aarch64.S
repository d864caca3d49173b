/* Fiber context switch for aarch64 (AAPCS64).
 *
 *   void braid__fiber_switch(void **save_sp, void *to_sp);
 *
 * Saves the callee-saved set — x19-x28, the frame pointer x29, the link
 * register x30 and the low halves of v8-v15 (d8-d15) — on the current stack,
 * stores sp in *save_sp, and restores the same set from to_sp; `ret` then
 * jumps to the restored x30. No system call.
 *
 * Frame at a saved stack pointer (160 bytes, 16-aligned):
 *   [0] x19 x20  [16] x21 x22  [32] x23 x24  [48] x25 x26  [64] x27 x28
 *   [80] x29 x30  [96] d8 d9  [112] d10 d11  [128] d12 d13  [144] d14 d15
 * src/fiber/fiber.c (ctx_init) builds a new fiber's first frame in this layout with
 * x30 = braid__fiber_entry, x19 = the fiber and x20 = braid__fiber_main. */
#if defined(__aarch64__) && !defined(BRAID_FIBER_UCONTEXT)
        .text
        .globl  braid__fiber_switch
        .hidden braid__fiber_switch
        .type   braid__fiber_switch, %function
        .p2align 4
braid__fiber_switch:
        sub     sp, sp, #160
        stp     x19, x20, [sp, #0]
        stp     x21, x22, [sp, #16]
        stp     x23, x24, [sp, #32]
        stp     x25, x26, [sp, #48]
        stp     x27, x28, [sp, #64]
        stp     x29, x30, [sp, #80]
        stp     d8, d9, [sp, #96]
        stp     d10, d11, [sp, #112]
        stp     d12, d13, [sp, #128]
        stp     d14, d15, [sp, #144]
        mov     x9, sp
        str     x9, [x0]
        mov     sp, x1
        ldp     x19, x20, [sp, #0]
        ldp     x21, x22, [sp, #16]
        ldp     x23, x24, [sp, #32]
        ldp     x25, x26, [sp, #48]
        ldp     x27, x28, [sp, #64]
        ldp     x29, x30, [sp, #80]
        ldp     d8, d9, [sp, #96]
        ldp     d10, d11, [sp, #112]
        ldp     d12, d13, [sp, #128]
        ldp     d14, d15, [sp, #144]
        add     sp, sp, #160
        ret
        .size   braid__fiber_switch, .-braid__fiber_switch

/* First code a new fiber runs: x19 = the fiber, x20 = braid__fiber_main
 * (never returns). x29 is 0 in the first frame, ending frame-pointer walks. */
        .globl  braid__fiber_entry
        .hidden braid__fiber_entry
        .type   braid__fiber_entry, %function
        .p2align 4
braid__fiber_entry:
        mov     x0, x19
        blr     x20
        brk     #0
        .size   braid__fiber_entry, .-braid__fiber_entry
#endif

#if defined(__linux__) && defined(__ELF__)
        .section .note.GNU-stack, "", %progbits
#endif
