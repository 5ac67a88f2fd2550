# The SSE fan-out hub of bench/apps/sse-fanout.pl in Mojolicious::Lite, for
# bench/sse-fanout.pl. Same closed loop: a batch of $BATCH events goes to
# every subscriber of /events, and the next batch goes out once every
# subscriber's batch has drained (the write callback of its last event).
# Same events (`event: tick`, 64-byte `data:`, `id:` the sequence number),
# framed here by the app, once per batch, as Mojolicious apps do; written
# with $c->write as in the Mojolicious EventSource guide.
# Run: perl bench/apps/sse-fanout-mojo.pl daemon -m production -l http://127.0.0.1:PORT
use Mojolicious::Lite -signatures;

my $BATCH   = $ENV{SSE_FANOUT_BATCH} || 50;
my $PAYLOAD = 'x' x 64;

my %subscribers;         # key => { c => controller, owed => batches not yet drained }
my $next_key    = 0;
my $seq         = 0;     # id of the last event published
my $outstanding = 0;     # subscriber-batches still being written

sub publish_batch {
    return if $outstanding || !%subscribers;
    my @events = map { "event: tick\ndata: $PAYLOAD\nid: $_\n\n" } $seq + 1 .. $seq + $BATCH;
    $seq += $BATCH;
    for my $sub (values %subscribers) {
        $sub->{owed}++;
        $outstanding++;
        my $c = $sub->{c};
        $c->write($_) for @events[ 0 .. $#events - 1 ];
        $c->write($events[-1], sub { settle($sub, 1) unless $sub->{gone} });
    }
}

sub settle {
    my ($sub, $n) = @_;
    $sub->{owed}  -= $n;
    $outstanding -= $n;
    Mojo::IOLoop->next_tick(\&publish_batch) if $outstanding == 0;
}

get '/events' => sub ($c) {
    $c->inactivity_timeout(300);
    $c->res->headers->content_type('text/event-stream');
    $c->res->headers->cache_control('no-cache');
    my $key = ++$next_key;
    my $sub = $subscribers{$key} = { c => $c, owed => 0 };
    $c->on(finish => sub {
        delete $subscribers{$key};
        $sub->{gone} = 1;    # its batches are settled here, not by late drain callbacks
        settle($sub, $sub->{owed}) if $sub->{owed};
    });
    $c->write;    # the headers now, events as the hub publishes them
    publish_batch();
};

get '/' => sub ($c) { $c->render(text => "sse-fanout\n") };

app->start;
