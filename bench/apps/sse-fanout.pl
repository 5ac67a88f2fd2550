# SSE fan-out for bench/sse-fanout.pl: every subscriber of /events (any
# request with Accept: text/event-stream) gets every event of one shared hub.
#
# The hub is closed-loop, so the server is the bottleneck: it publishes a
# batch of $BATCH events to all subscribers, and the next batch goes out as
# soon as every subscriber has sent the whole batch (each $send awaited, so
# write backpressure applies). Events: `event: tick`, `data:` 64 bytes, `id:`
# the sequence number. bench/apps/sse-fanout-mojo.pl is the same hub in
# Mojolicious. GET / answers 'sse-fanout' so the runner can probe readiness.
# A package of its own: apps/suite.pl loads this file beside its own subs.
package PAGI::Bench::SSEFanout;
use strict;
use warnings;
use Future::AsyncAwait;
use IO::Async::Loop;

my $BATCH   = $ENV{SSE_FANOUT_BATCH} || 50;
my $PAYLOAD = 'x' x 64;

my %subscribers;         # key => { queue => [[first, last], ...], owed => batches not yet sent, wake }
my $next_key    = 0;
my $seq         = 0;     # id of the last event published
my $outstanding = 0;     # subscriber-batches still being sent
my $publish_queued = 0;  # a publish_batch already waits on the loop
my $loop;

sub publish_batch {
    return if $outstanding || !%subscribers;
    my @range = ($seq + 1, $seq + $BATCH);
    $seq += $BATCH;
    for my $sub (values %subscribers) {
        push @{ $sub->{queue} }, \@range;
        $sub->{owed}++;
        $outstanding++;
        if (my $wake = delete $sub->{wake}) { $wake->done }
    }
}

# One subscriber finished (or abandoned) $n batches; the last one to finish
# starts the next batch on the next loop iteration.
sub settle {
    my ($sub, $n) = @_;
    $sub->{owed}  -= $n;
    $outstanding -= $n;
    schedule_publish() if $outstanding == 0;
}

# Batches start from the loop, at most one queued: publishing straight from
# a subscribe or a settle would send a whole batch to everyone inside that
# call, and a burst of new subscribers would then hold the loop for seconds.
sub schedule_publish {
    return if $publish_queued;
    $publish_queued = 1;
    $loop->later(sub { $publish_queued = 0; publish_batch() });
}

async sub stream {
    my ($scope, $receive, $send) = @_;
    $loop //= IO::Async::Loop->new;
    my $sub = { queue => [], owed => 0 };
    my $key = ++$next_key;
    await $send->({ type => 'sse.start', status => 200 });
    my $gone = $receive->()->then(sub {
        my ($ev) = @_;
        return $ev->{type} eq 'sse.request' ? $receive->() : Future->done($ev);
    });
    $subscribers{$key} = $sub;
    schedule_publish();
    while (!$gone->is_ready) {
        if (my $batch = shift @{ $sub->{queue} }) {
            my ($first, $last) = @$batch;
            for my $id ($first .. $last) {
                await $send->({ type => 'sse.send', event => 'tick', id => $id, data => $PAYLOAD });
                last if $gone->is_ready;
            }
            settle($sub, 1) unless $gone->is_ready;
            next;
        }
        $sub->{wake} = $loop->new_future;
        await Future->wait_any($sub->{wake}, $gone->without_cancel);
    }
    delete $subscribers{$key};
    settle($sub, $sub->{owed}) if $sub->{owed};
}

async sub app {
    my ($scope, $receive, $send) = @_;
    return await stream($scope, $receive, $send) if $scope->{type} eq 'sse';
    die "Unsupported scope type: $scope->{type}\n" if $scope->{type} ne 'http';
    await $send->({ type => 'http.response.start', status => 200,
                    headers => [ [ 'content-type', 'text/plain' ] ] });
    await $send->({ type => 'http.response.body', body => "sse-fanout\n" });
}

\&app;
