package PAGI::Simple::SSE;
use v5.36;
use Future;
use Future::AsyncAwait;
use JSON::MaybeXS ();
use Scalar::Util qw(blessed weaken);

our $VERSION = '0.01';

=head1 NAME

PAGI::Simple::SSE - the C<$sse> of a PAGI::Simple Server-Sent Events route

=head1 SYNOPSIS

    $app->sse('/feed' => sub ($sse) {
        $sse->keepalive(15);
        $sse->send(hello => { resumed_from => $sse->last_event_id }, 1);
        $sse->subscribe('news');                  # later: $app->pubsub->publish('news', ...) or $sse->publish
    });

=head1 LIFECYCLE

The framework sends C<sse.start> (200, C<text/event-stream>,
C<Cache-Control: no-cache>), runs the handler, then keeps the stream open
until the client disconnects or C<close> is called (which sends C<sse.close>).
Channels are left and the C<close> callbacks run at the end.

=head1 METHODS

=over

=item send($event, $data, [$id]) returns Future

C<$event> may be undef (a plain message). A reference C<$data> is sent as
JSON.

=item send_event(data => ..., event => ..., id => ..., retry => ...) returns Future

=item comment($text), keepalive($seconds, [$comment]) (0 stops)

=item last_event_id

The client's C<Last-Event-ID> request header (undef when absent), for
resuming after a reconnect.

=item subscribe($channel), unsubscribe($channel), unsubscribe_all, channels, in_channel($channel)

=item publish($channel, $data, [event => $name, id => $id, retry => $ms]), publish_others(...)

Delivered as an event to every subscriber of the channel (C<publish_others>
skips this stream); a reference as data is sent as JSON. Returns the
receivers reached in this process.

=item channel_count($channel), channel_cluster_count($channel)

The channel's subscribers in this process now, and a Future of them
across every worker and machine (pagi-server with C<--pubsub
redis://...>; otherwise the local count): C<< $app->pubsub >>'s
C<subscribers("sse:$channel")> and C<cluster_subscribers>.

=item on(close => sub {}), on(error => sub ($err) {}), close, is_closed, stash, path_params, param, scope, app

=item query_param($name), query_params($name)

The request's query string: the last value of a name, or all of them
(decoded as UTF-8, as C<< $c->req >> does).

=back

Channel C<NAME> is C<sse:NAME> on the app's L<PAGI::Simple::PubSub>. Under
PAGI::Server (the C<groups> extension) the stream itself is a member of
that engine group (C<groups.join> on its own C<$send> once started), and a
publish is one C<groups.publish> that the engine writes as one SSE event
to every member, across workers with C<--pubsub redis://...> (see
L<PAGI::Simple/ROOMS AND CHANNELS ACROSS WORKERS>).

=cut

my $JSON = JSON::MaybeXS->new(utf8 => 0, canonical => 1, allow_nonref => 1);
my $NEXT_ID = 0;

sub new ($class, %args) {
    bless { handlers => { close => [], error => [] }, channels => {}, stash => {}, pending => [],
        id => 'sse' . $$ . '.' . ++$NEXT_ID, %args }, $class;
}

sub id ($self) { $self->{id} }
sub scope ($self) { $self->{scope} }
sub app ($self) { $self->{app} }
sub stash ($self) { $self->{stash} }
sub path_params ($self) { $self->{path_params} }
sub param ($self, $n) { $self->{path_params}{$n} }
# The query string of the request that opened this stream, parsed as $c->req does.
sub _req ($self) {
    require PAGI::Simple::Request;
    $self->{req} //= PAGI::Simple::Request->new(scope => $self->{scope});
}
sub query_param ($self, $name)  { $self->_req->query_param($name) }
sub query_params ($self, $name) { $self->_req->query_params($name) }
sub is_closed ($self) { $self->{closed} ? 1 : 0 }
sub pubsub ($self) { $self->{app}->pubsub }

sub last_event_id ($self) {
    for my $h (@{ $self->{scope}{headers} || [] }) { return $h->[1] if lc $h->[0] eq 'last-event-id' }
    return undef;
}

sub on ($self, $event, $cb) {
    die "sse on: unknown event '$event' (close or error)\n" unless $self->{handlers}{$event};
    push @{ $self->{handlers}{$event} }, $cb;
    $self;
}

sub _track ($self, $f) {
    @{ $self->{pending} } = grep { !$_->is_ready } @{ $self->{pending} };
    push @{ $self->{pending} }, $f;
    $f;
}

sub send_event ($self, %e) {
    return Future->done if $self->{closed};
    my $data = $e{data} // '';
    $data = $JSON->encode($data) if ref $data;
    my %ev = (type => 'sse.send', data => "$data");
    for my $k (qw(event id)) {
        next unless defined $e{$k} && length $e{$k};
        die "sse: '$k' must not contain CR or LF\n" if $e{$k} =~ /[\r\n]/;
        $ev{$k} = "$e{$k}";
    }
    if (defined $e{retry}) {
        die "sse: 'retry' must be a non-negative integer\n" unless $e{retry} =~ /\A\d+\z/;
        $ev{retry} = 0 + $e{retry};
    }
    return $self->_track($self->{send}->(\%ev));
}

sub send ($self, $event, $data, $id = undef) { $self->send_event(event => $event, data => $data, id => $id) }

sub comment ($self, $text) {
    return Future->done if $self->{closed};
    $self->_track($self->{send}->({ type => 'sse.comment', comment => "$text" }));
}

sub keepalive ($self, $interval, $comment = '') {
    return Future->done if $self->{closed};
    $self->_track($self->{send}->({ type => 'sse.keepalive', interval => $interval, comment => $comment }));
}

sub subscribe ($self, $channel) {
    if ($self->{groups}) {
        # The engine path: this stream is a member of the group; the engine writes the events.
        $self->_group_join("sse:$channel") unless $self->{channels}{$channel};
    }
    else {
        weaken(my $weak = $self);
        $self->pubsub->subscribe("sse:$channel", sub ($m, @) {
            $weak->send_event(ref $m eq 'HASH' && $m->{_pagi_sse} ? %{ $m->{event} } : (data => $m)) if $weak;
        }, $self->{id});
    }
    $self->{channels}{$channel} = 1;
    $self;
}
sub unsubscribe ($self, $channel) {
    return $self unless delete $self->{channels}{$channel};
    if ($self->{groups}) { $self->_group_leave("sse:$channel") }
    else { $self->pubsub->unsubscribe("sse:$channel", $self->{id}) }
    $self;
}
sub unsubscribe_all ($self) { $self->unsubscribe($_) for keys %{ $self->{channels} }; $self }
sub channels ($self) { [ sort keys %{ $self->{channels} } ] }
sub in_channel ($self, $ch) { $self->{channels}{$ch} ? 1 : 0 }
sub channel_count ($self, $channel) { $self->pubsub->subscribers("sse:$channel") }
sub channel_cluster_count ($self, $channel) { $self->pubsub->cluster_subscribers("sse:$channel") }

sub _group_join ($self, $group) { $self->_track($self->{groups}->_join_member($self, $group)) }
sub _group_leave ($self, $group) {
    # After sse.close the stream leaves with its end.
    my $f = $self->{groups}->_leave_member($self, $group, !($self->{gone} || $self->{closed}));
    $self->_track($f) if $f;
}
# The backend made this stream leave a group (unsubscribe).
sub _left_group ($self, $group) {
    delete $self->{channels}{$1} if $group =~ /\Asse:(.*)\z/s;
    $self->_group_leave($group);
}

sub _message ($data, %opt) { { _pagi_sse => 1, event => { data => $data, event => $opt{event}, id => $opt{id}, retry => $opt{retry} } } }
sub publish ($self, $channel, $data, %opt) { $self->_publish($channel, $data, 0, %opt) }
sub publish_others ($self, $channel, $data, %opt) { $self->_publish($channel, $data, 1, %opt) }
sub _publish ($self, $channel, $data, $others, %opt) {
    my $message = _message($data, %opt);
    if (my $groups = $self->{groups}) {
        my $group = "sse:$channel";
        my ($n, $f) = $groups->_publish($group, PAGI::Simple::PubSub::Server::_encode($group, $message),
            from => $self, exclude_self => $others);
        $self->_track($f);
        return $n;
    }
    return $self->pubsub->publish("sse:$channel", $message, $others ? (exclude => $self->{id}) : ());
}

sub close ($self) {
    return Future->done if $self->{closed}++;
    my $f = $self->{send}->({ type => 'sse.close' });
    $self->{closed_f}->done unless $self->{closed_f}->is_ready;
    $f;
}

async sub run ($self, $handler) {
    my ($receive, $send) = @$self{qw(receive send)};
    $self->{closed_f} = Future->new;
    await $send->({ type => 'sse.start', status => 200,
        headers => [ [ 'content-type', 'text/event-stream' ], [ 'cache-control', 'no-cache' ] ] });
    my $ok = eval {
        my $r = $handler->($self);
        await $r if blessed($r) && $r->isa('Future');
        1;
    };
    unless ($ok) {
        my $err = $@;
        warn "sse handler error: $err" unless @{ $self->{handlers}{error} };
        $_->($err) for @{ $self->{handlers}{error} };
        $self->close;
    }
    until ($self->{closed}) {
        my $ev = await Future->wait_any($receive->(), $self->{closed_f}->without_cancel);
        last if $self->{closed} || !ref $ev || ($ev->{type} // '') ne 'sse.request';
    }
    $self->{closed} = 1;
    # The stream ended: the engine takes it out of its groups.
    $self->{gone} = 1;
    $self->unsubscribe_all;
    for my $cb (@{ $self->{handlers}{close} }) { eval { $cb->(); 1 } or warn "sse close callback failed: $@" }
    await Future->wait_all(@{ $self->{pending} }) if @{ $self->{pending} };
    return;
}

1;
