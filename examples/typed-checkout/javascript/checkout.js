// Checkout against the shop's typed interfaces: charge the card, save the
// order, send the receipt, each a plain call of the `acme:shop` imports,
// with no escrow helper.
//
// The host declares the three interfaces deferred (escrow.toml), so each
// call is an intent, dispatched only if the whole checkout succeeds. With
// {"fail": true} saving the order fails after the charge was requested, and
// nothing is dispatched.

import { charge } from 'acme:shop/payments@1.0.0';
import { save } from 'acme:shop/orders@1.0.0';
import { send } from 'acme:shop/email@1.0.0';
import { pending } from 'escrow:host/intents@0.1.0';

export function run(input) {
  const text = new TextDecoder().decode(input);
  const order = text.length === 0 ? {} : JSON.parse(text);
  const id = order.id ?? 42;
  charge(BigInt(order.amount ?? 1999), BigInt(id));
  if (order.fail) {
    throw `saving order ${id} failed: the orders table is read-only`;
  }
  save(BigInt(id), 'paid');
  send(`Receipt for order ${id}`, order.email ?? 'ada@example.com');
  const receipt = { order: id, intents: pending().length };
  return new TextEncoder().encode(JSON.stringify(receipt));
}
