// Checkout: charge the card, save the order, send the receipt.
//
// All three effects are deferred: the host dispatches them only if the whole
// checkout succeeds. With {"fail": true} saving the order fails after the
// charge was requested, and nothing is dispatched.

import { defer, pending, plugin } from '../../../guest-sdk/js/escrow.js';

export const run = plugin((order) => {
  const id = order.id ?? 42;
  defer('payments.charge', { amount: order.amount ?? 1999, order: id });
  if (order.fail) {
    throw new Error(`saving order ${id} failed: the orders table is read-only`);
  }
  defer('orders.save', { order: id, status: 'paid' });
  defer('email.send', { subject: `Receipt for order ${id}`, to: order.email ?? 'ada@example.com' });
  return { order: id, intents: pending().length };
});
