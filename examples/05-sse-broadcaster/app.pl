# Server-Sent Events broadcaster: every open EventSource gets the same events.
# Run: perl -Mblib bin/pagi-server examples/05-sse-broadcaster/app.pl --port 5000
# Open http://127.0.0.1:5000/ in several browser tabs, then publish:
#      curl -d 'hello everyone' http://127.0.0.1:5000/publish
# or watch the raw stream:
#      curl -N -H 'Accept: text/event-stream' http://127.0.0.1:5000/events
# A clock event goes out every second; a reconnecting browser sends
# Last-Event-ID, which the app reads from the headers to resume numbering.
use strict;
use warnings;
use utf8;
use Future::AsyncAwait;
use IO::Async::Loop;
use IO::Async::Timer::Periodic;

my $PAGE = <<'HTML';
<!doctype html>
<meta charset="utf-8">
<title>PAGI SSE broadcaster</title>
<h1>Events</h1>
<ul id="log"></ul>
<script>
  const log = document.getElementById('log');
  const source = new EventSource('/events');
  for (const kind of ['clock', 'message']) {
    source.addEventListener(kind, (e) => {
      const item = document.createElement('li');
      item.className = kind;
      item.textContent = kind + ': ' + e.data;
      log.appendChild(item);
    });
  }
</script>
HTML

# One hub per worker: subscribers are queues the hub fills; each stream's
# coroutine awaits its own queue, so every $send is awaited.
my %subscribers;
my $next_subscriber = 0;
my $event_id = 0;

sub publish {
    my ($event, $data) = @_;
    $event_id++;
    for my $sub (values %subscribers) {
        push @{ $sub->{queue} }, { event => $event, data => $data, id => $event_id };
        if (my $wake = delete $sub->{wake}) { $wake->done }
    }
}

async sub stream_events {
    my ($scope, $receive, $send) = @_;
    my ($last) = map { $_->[1] } grep { $_->[0] eq 'last-event-id' } @{ $scope->{headers} };
    $event_id = $last if defined $last && $last =~ /\A\d+\z/ && $last > $event_id;
    my $loop = IO::Async::Loop->new;
    my $sub = { queue => [] };
    my $key = ++$next_subscriber;
    $subscribers{$key} = $sub;
    await $send->({ type => 'sse.start', status => 200 });
    await $send->({ type => 'sse.keepalive', interval => 15 });
    await $send->({ type => 'sse.send', event => 'message', data => 'welcome (' . scalar(keys %subscribers) . ' listening)' });
    my $gone = $receive->()->then(sub {
        my ($ev) = @_;
        return $ev->{type} eq 'sse.request' ? $receive->() : Future->done($ev);
    });
    while (!$gone->is_ready) {
        if (my $ev = shift @{ $sub->{queue} }) {
            await $send->({ type => 'sse.send', %$ev });
            next;
        }
        $sub->{wake} = $loop->new_future;
        await Future->wait_any($sub->{wake}, $gone->without_cancel);
    }
    delete $subscribers{$key};
}

async sub app {
    my ($scope, $receive, $send) = @_;
    if ($scope->{type} eq 'lifespan') {
        while (1) {
            my $ev = await $receive->();
            if ($ev->{type} eq 'lifespan.startup') {
                my $timer = IO::Async::Timer::Periodic->new(
                    interval => 1,
                    on_tick  => sub { publish(clock => scalar gmtime) },
                );
                IO::Async::Loop->new->add($timer->start);
                $scope->{state}{clock} = $timer;
                await $send->({ type => 'lifespan.startup.complete' });
            }
            elsif ($ev->{type} eq 'lifespan.shutdown') {
                await $send->({ type => 'lifespan.shutdown.complete' });
                return;
            }
        }
    }
    return await stream_events($scope, $receive, $send) if $scope->{type} eq 'sse';
    die "Unsupported scope type: $scope->{type}\n" if $scope->{type} ne 'http';

    if ($scope->{path} eq '/publish' && $scope->{method} eq 'POST') {
        my $body = '';
        while (1) {
            my $ev = await $receive->();
            last unless $ev->{type} eq 'http.request';
            $body .= $ev->{body};
            last unless $ev->{more};
        }
        utf8::decode($body);
        publish(message => $body);
        await $send->({ type => 'http.response.start', status => 202,
                        headers => [ [ 'content-type', 'text/plain' ] ] });
        await $send->({ type => 'http.response.body', body => 'sent to ' . scalar(keys %subscribers) . " listeners\n" });
        return;
    }
    my $page = $PAGE;
    utf8::encode($page);
    await $send->({ type => 'http.response.start', status => 200,
                    headers => [ [ 'content-type', 'text/html; charset=utf-8' ] ] });
    await $send->({ type => 'http.response.body', body => $page });
}

\&app;
