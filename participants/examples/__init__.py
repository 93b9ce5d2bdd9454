"""Example participants for the demo and the tests, with failure and delay injection.

Each module is runnable as ``python -m participants.examples.<name>`` (settings from the
``SAGA_*`` environment: ``SAGA_AMQP_URL``, ``SAGA_MONGODB_URL``, ``SAGA_MONGODB_DATABASE``,
``SAGA_EXCHANGE_PREFIX``, …) and exposes ``build(**settings) -> Participant``, whose
keyword arguments are ``ParticipantSettings`` fields (e.g. ``amqp_url``, ``mongodb_url``,
``mongodb_database``, ``exchange_prefix``, ``queue``). ``participant.executions`` counts
handler calls per idempotency key.

===============  ==================================  ===========================================
participant      commands                            injected behaviour (driven by the input)
===============  ==================================  ===========================================
``inventory``    ``reserve_stock`` {order_id,        any ``sku`` starting with ``OOS-`` →
                 items: [{sku, qty}]} →              ``out_of_stock`` (not retryable); a
                 {reservation_id};                   ``qty`` < 1 → ``invalid_quantity``
                 ``release_stock`` {reservation_id}
``payments``     ``charge`` {order_id, amount,       card ``4000-0000-0000-0002`` →
                 card} → {charge_id};                ``card_declined`` (not retryable); card
                 ``refund`` {charge_id}              ``4000-0000-0000-0119`` →
                                                     ``processor_unavailable`` (retryable) on
                                                     attempt 1, success after
``risk``         ``review`` {order_id, amount,       card ``4000-0000-0000-4954`` →
                 card} → {review_id, verdict}        ``fraud_suspected`` (not retryable)
``shipping``     ``create_shipment`` {order_id,      an address containing ``slow`` sleeps 5 s
                 address} → {tracking_number}        before answering, ``slow:<duration>``
                                                     (``500ms``, ``3s``, ``1m``) that long; an
                                                     address containing ``UNDELIVERABLE`` →
                                                     ``undeliverable`` (not retryable)
``flights``      ``book_flight`` {trip_id, flight}   flight ``SOLD-OUT`` → ``no_seats`` (not
                 → {booking_id};                     retryable)
                 ``cancel_flight`` {booking_id}
``hotels``       ``book_room`` {trip_id, hotel,      hotel ``FULL`` → ``no_rooms`` (not
                 nights} → {booking_id};             retryable); ``nights`` < 1 →
                 ``cancel_room`` {booking_id}        ``invalid_nights``; a hotel containing
                                                     ``slow`` / ``slow:<duration>`` sleeps
                                                     (5 s / that long) before answering
===============  ==================================  ===========================================

A missing or mistyped input field fails with ``invalid_input`` (not retryable) everywhere.
Every handler also honours an optional ``"_delay"`` input field (a duration such as
``"2s"``): it sleeps that long first, to trip a short step timeout on purpose.

No example participant publishes ``payment.authorized``, the event ``trip-booking`` waits
for: it stands for a payment provider outside the saga. ``saga-coordinator demo`` publishes
it; next to ``saga-coordinator dev --examples``, publish it on the events exchange or send it
with ``saga-coordinator sagas send-event SAGA_ID payment.authorized --body
'{"trip_id": "t-1", "authorization_id": "au-1"}'``.
"""
